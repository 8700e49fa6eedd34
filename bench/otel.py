"""An OpenTelemetry SDK set up the way an app would: real tracer and meter providers, spans
batched to an exporter that only counts them (no network)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult


class CountingExporter(SpanExporter):
    """Drops spans after counting them."""

    def __init__(self) -> None:
        self.spans = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


class OTel:
    """Tracer provider (BatchSpanProcessor -> CountingExporter) and meter provider (in-memory
    reader, so the instrumentation's pool metric is really recorded)."""

    def __init__(self) -> None:
        self.exporter = CountingExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(BatchSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    def spans(self) -> int:
        """Spans exported so far (after flushing the batch processor)."""
        self.tracer_provider.force_flush()
        return self.exporter.spans

    def instrument_sqlalchemy(self, sync_engine: Any) -> Any:
        from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

        instrumentor = SQLAlchemyInstrumentor()
        # The instrumentation declares "sqlalchemy < 2.1.0" and silently does nothing on 2.1
        # unless told to skip that check (what a user on SQLAlchemy 2.1 has to do as well).
        instrumentor.instrument(
            skip_dep_check=True,
            engine=sync_engine,
            tracer_provider=self.tracer_provider,
            meter_provider=self.meter_provider,
        )
        return instrumentor

    def shutdown(self) -> None:
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()
