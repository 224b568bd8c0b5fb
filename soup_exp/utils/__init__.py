"""Small shared helpers: atomic IO, hashing, devices, logging."""
