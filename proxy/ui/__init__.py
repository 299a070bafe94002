"""The live page (`/ui`): static HTML, JS and CSS shipped in this package, served by the proxy."""
