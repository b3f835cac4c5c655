"""Policy files: schema (pydantic, at the edge), pure policy values, loading and lint."""
