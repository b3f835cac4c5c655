from tests.storage.fixtures import db_url, sqlite_url

__all__ = ["db_url", "sqlite_url"]
