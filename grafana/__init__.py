"""tbg-proxy's Grafana dashboards and monitoring expressions, as code (not part of the proxy package)."""
