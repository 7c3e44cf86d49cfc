"""The migrations' lock names the database: a MySQL/MariaDB named lock is the whole
server's, and two databases on one server (two stacks, two test sandboxes) migrate at
once instead of waiting for each other; one database's migrations still take turns."""

from __future__ import annotations

from orderstack.storage.migrate import _lock_name


def test_each_database_and_service_has_its_own_lock() -> None:
    names = {
        _lock_name(service, database)
        for service in ("orders", "products")
        for database in ("shop", "os_a1", "os_b2")
    }
    assert len(names) == 6


def test_a_lock_name_fits_mysql_s_64_characters_and_stays_distinct() -> None:
    long_a, long_b = "d" * 64, "d" * 63 + "e"
    assert len(_lock_name("products", long_a)) <= 64
    assert _lock_name("products", long_a) != _lock_name("products", long_b)
    assert _lock_name("orders", "shop") == _lock_name("orders", "shop")
