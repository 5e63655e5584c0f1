"""tempo-bridge: TraceQL metrics recording rules, written to Prometheus by remote write."""

__version__ = "0.1.0"

USER_AGENT = f"tempo-bridge/{__version__}"
"""The User-Agent of every request the bridge sends (Tempo, the receiver, doctor)."""
