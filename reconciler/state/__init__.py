"""Where desired state lands: the state stores (DynamoDB, embedded SQLite) behind one Protocol."""
