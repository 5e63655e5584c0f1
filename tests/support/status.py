"""Status boards for the status page's tests: one with every problem and markup planted in
every text, one healthy."""

from __future__ import annotations

from datetime import UTC, datetime

from bridge.status import (
    Evaluation,
    GroupStatus,
    ReceiverAnswer,
    Reload,
    RuleStatus,
    Status,
    TempoContact,
)

NOW = datetime(2026, 11, 28, 20, 2, 5, tzinfo=UTC).timestamp()
CHECKPOINT = int(NOW) - 125  # 20:00:00
PLANTED = {
    "group": "g<script>alert(1)</script>",
    "record": "r<script>alert(2)</script>",
    "label": "<script>alert(3)</script>",
    "expr": '{ span.x = "<script>alert(4)</script>" } | count_over_time()',
    "tempo": "Tempo answered 500: <script>alert(5)</script>",
    "receiver": "HTTP 503: <script>alert(6)</script>",
    "reload": "rules.yaml:3:15: interval: '<script>alert(7)</script>' is not a duration",
    "unreachable": "cannot reach Tempo (<img src=x onerror=alert(8)>)",
    "config": "/etc/<b>tempo-bridge</b>/bridge.yaml",
    "tenant": "<i>tenant</i>",
}

OK_RUN = Evaluation(at=NOW - 12, duration=0.035, series=9, queries={"range": 1, "instant": 2},
                    windows=3)
FAILED_RUN = Evaluation(at=NOW - 3, duration=1.25, series=0, queries={"instant": 1}, windows=0,
                        error=PLANTED["tempo"], reason="http_500")


def hostile() -> Status:
    """A bridge with one rule of each health, every problem, and markup in every text."""
    rules = [
        RuleStatus("ok_total", "counter", PLANTED["expr"], {"team": PLANTED["label"]},
                   checkpoint=CHECKPOINT, settle={600: CHECKPOINT - 600}, last=OK_RUN),
        RuleStatus(PLANTED["record"], "counter", "{ } | count_over_time()",
                   checkpoint=CHECKPOINT - 300, windows_behind=5, last=FAILED_RUN,
                   last_error=FAILED_RUN),
        RuleStatus("biggest", "gauge", "{ } | max_over_time(span.cost)"),
    ]
    return Status(
        version="0.1.0", started=NOW - 3725, config_file=PLANTED["config"],
        groups=[GroupStatus(
            name=PLANTED["group"], file="rules/openrouter.yaml", interval=60, query_offset=120,
            settle=(600, 3600), tenant=PLANTED["tenant"], rules=rules,
            labels={"source": PLANTED["label"]},
        )],
        outbox_samples=1234, outbox_oldest_age=125.0, outbox_updated=NOW - 1,
        outbox_waiting_since=NOW - 40, outbox_waiting_samples=1000,
        receiver=ReceiverAnswer(NOW - 4, 503, PLANTED["receiver"]),
        receiver_url="http://127.0.0.1:9090/api/v1/write",
        tempo=TempoContact(NOW - 2, False, PLANTED["unreachable"], "network", reachable=False),
        tempo_url="http://127.0.0.1:3200",
        last_reload=Reload(NOW - 60, False, PLANTED["reload"]),
        sender_alive=False,
    )


def healthy() -> Status:
    return Status(
        version="0.1.0", started=NOW - 50, config_file="bridge.yaml",
        groups=[GroupStatus(
            name="g", file="rules.yaml", interval=60, query_offset=120, settle=(600,),
            tenant=None, rules=[RuleStatus("x_total", "counter", "{ } | count_over_time()",
                                           checkpoint=CHECKPOINT, last=OK_RUN)],
        )],
        outbox_updated=NOW - 1,
        receiver=ReceiverAnswer(NOW - 5, 204, None), receiver_url="http://receiver/api/v1/write",
        tempo=TempoContact(NOW - 12, True), tempo_url="http://tempo:3200",
        last_reload=Reload(NOW - 50, True),
    )
