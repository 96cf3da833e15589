"""The engine under `epic-bridge run`: per topic prefix, the group membership that decides which process
owns which connection, the transaction helper, the internal tables, and the connection workers."""
