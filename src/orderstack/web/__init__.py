"""HTTP pieces shared by both services: error mapping, limits, health, admin guard, serving."""
