"""One APIRouter a resource."""
