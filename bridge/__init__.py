"""tempo-bridge: TraceQL metrics recording rules, written to Prometheus by remote write."""

__version__ = "0.1.0"
