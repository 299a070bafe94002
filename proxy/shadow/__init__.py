"""Shadow replay: sample temperature-0 requests, replay them off the hot path, estimate T_bg."""
