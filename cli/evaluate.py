"""`mscn-geo evaluate` (owned by the training work; placeholder until it lands)."""
