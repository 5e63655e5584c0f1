"""Helpers shared by the tests, one home each: a fake clock, rule files and configs, the
Tempo double served over HTTP, a running daemon, remote-write receivers, a real Prometheus
and promtool, Grafana's template variables, synthetic OpenRouter traffic and its truth.
The benchmarks (``bench/``) and the reliability harness (``reliability/``) use them too;
nothing here imports those."""
