"""soup-exp's Hydra launcher plugins (Hydra finds plugins only under ``hydra_plugins``)."""
