"""Prometheus metric families, scrape-time collectors, batching, exposition, the metrics port."""
