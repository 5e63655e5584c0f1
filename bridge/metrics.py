"""Self metrics: what the bridge exposes on ``/metrics``, all prefixed ``tempo_bridge_``."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from bridge import __version__


class Metrics:
    """The bridge's own metrics, on a registry of their own (no process-global state)."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        Info("tempo_bridge_build", "Version of tempo-bridge.", registry=r).info(
            {"version": __version__}
        )
        rule = ["group", "rule"]
        self.evaluations = Counter(
            "tempo_bridge_evaluations",
            "Rule evaluations: one per rule per tick, however many Tempo queries it needs.",
            rule, registry=r,
        )
        self.evaluation_failures = Counter(
            "tempo_bridge_evaluation_failures",
            "Rule evaluations that failed, by reason; the windows are retried later.",
            [*rule, "reason"], registry=r,
        )
        self.evaluation_duration = Histogram(
            "tempo_bridge_evaluation_duration_seconds",
            "Time to evaluate one rule: its Tempo queries, the evaluation and the state commits.",
            ["group"], registry=r,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.tempo_query_duration = Histogram(
            "tempo_bridge_tempo_query_duration_seconds",
            "Time from sending a query to Tempo until its answer is parsed, by kind.",
            ["kind"], registry=r,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.windows_evaluated = Counter(
            "tempo_bridge_windows_evaluated", "Windows recorded, per rule.", rule, registry=r
        )
        self.windows_settled = Counter(
            "tempo_bridge_windows_settled",
            "Recorded windows read again at a settle age (late spans), per rule.",
            rule, registry=r,
        )
        self.settle_growth = Counter(
            "tempo_bridge_settle_growth",
            "Series values of settled windows that had grown since they were recorded.",
            rule, registry=r,
        )
        self.series_merged = Counter(
            "tempo_bridge_series_merged",
            "Tempo series summed into a Prometheus series that another one also maps to "
            "(labels that differ only by an empty or missing value, by type, or by missing_value).",
            rule, registry=r,
        )
        self.windows_behind = Gauge(
            "tempo_bridge_windows_behind",
            "Windows due but not yet recorded, per rule (0 when caught up).",
            rule, registry=r,
        )
        self.last_success = Gauge(
            "tempo_bridge_last_success_timestamp_seconds",
            "Unix time of the last successful evaluation, per rule.", rule, registry=r,
        )
        self.checkpoint = Gauge(
            "tempo_bridge_checkpoint_timestamp_seconds",
            "End of the last window recorded, per rule.", rule, registry=r,
        )
        self.tempo_queries = Counter(
            "tempo_bridge_tempo_queries", "Queries sent to Tempo, by kind.", ["kind"],
            registry=r,
        )
        self.tempo_clock_skew = Gauge(
            "tempo_bridge_tempo_clock_skew_seconds",
            "Tempo's clock minus this host's, from the Date header of its latest answer "
            "(the middle of the bounds the header's one-second resolution allows).",
            registry=r,
        )
        self.tempo_clock_skew_certain = Gauge(
            "tempo_bridge_tempo_clock_skew_certain_seconds",
            "How far apart Tempo's clock and this host's surely are (0 when the Date header "
            "allows them to agree).", registry=r,
        )
        self.samples_sent = Counter(
            "tempo_bridge_samples_sent", "Samples accepted by the remote-write receiver.",
            registry=r,
        )
        self.send_retries = Counter(
            "tempo_bridge_send_retries",
            "Remote-write requests retried after a retryable failure, by reason.",
            ["reason"], registry=r,
        )
        self.samples_dropped = Counter(
            "tempo_bridge_samples_dropped",
            "Samples never delivered, by reason (rejected, too_old, out_of_order).",
            ["reason"], registry=r,
        )
        self.outbox_samples = Gauge(
            "tempo_bridge_outbox_samples", "Samples waiting in the outbox.", registry=r
        )
        self.outbox_oldest_age = Gauge(
            "tempo_bridge_outbox_oldest_sample_age_seconds",
            "Age of the oldest sample waiting in the outbox (0 when empty).", registry=r,
        )
        self.sender_restarts = Counter(
            "tempo_bridge_sender_restarts",
            "Times the sender stopped on an unexpected error and was started again.",
            registry=r,
        )
        self.rules_forgotten = Counter(
            "tempo_bridge_rules_forgotten",
            "Removed rules whose state was dropped after state_retention.", registry=r,
        )
        self.rule_groups = Gauge(
            "tempo_bridge_rule_groups", "Rule groups loaded.", registry=r
        )
        self.rules = Gauge("tempo_bridge_rules", "Rules loaded.", registry=r)
        self.reload_success = Gauge(
            "tempo_bridge_config_last_reload_successful",
            "1 if the last reload of the rule files succeeded.", registry=r,
        )
        self.reload_timestamp = Gauge(
            "tempo_bridge_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful reload.", registry=r,
        )
