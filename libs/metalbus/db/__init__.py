"""PostgreSQL access for the region: the asyncpg pool and the versioned migrations runner."""
