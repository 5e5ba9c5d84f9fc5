"""The FastAPI serving tier: ``uvicorn serving.app:create_app --factory``."""
