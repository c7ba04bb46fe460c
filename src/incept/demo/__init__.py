"""`incept demo`: the whole job on data drawn on the spot."""
