"""Code every dropwatch service shares: settings, database access, models and the contract."""
