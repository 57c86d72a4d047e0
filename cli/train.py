"""`mscn-geo train` (owned by the training work; placeholder until it lands)."""
