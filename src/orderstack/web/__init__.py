"""HTTP pieces both services share: the base app, error mapping in both styles, body and
in-flight limits, health and readiness, the admin guard. May import ``config``,
``storage`` and the utilities; never a service or messaging."""
