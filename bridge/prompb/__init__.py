"""Prometheus remote-write 1.0 protobuf messages (``prometheus.WriteRequest`` and its parts).

``remote_pb2.py`` and ``remote_pb2.pyi`` are generated from ``remote.proto`` by
``scripts/gen-proto``, which runs::

    uv run --frozen python -m grpc_tools.protoc -I. --python_out=. --mypy_out=. \\
        bridge/prompb/remote.proto

Do not edit them by hand; edit ``remote.proto`` and rerun the script.
"""
