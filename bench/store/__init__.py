"""Store benchmark: appends/s over HTTP against a real Keel, next to raw sqlite3 appends."""
