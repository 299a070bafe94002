"""The embedded reference upstream: SmolLM2-135M-Instruct served on CPU (`tbg reference`)."""
