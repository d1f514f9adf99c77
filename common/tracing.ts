/**
 * OpenTelemetry tracing for all three processes (STUB: being written; the signatures below are the contract).
 * Off unless the standard OTEL_* variables ask for it.
 */

/** The coordinator's span for one job attempt; `traceparent` is undefined when tracing is off. */
export interface AttemptSpan {
  traceparent: string | undefined;
  end(outcome: 'succeeded' | 'failed' | 'queued' | 'cancelled' | string, reason?: string): void;
}

export function startAttemptSpan(_jobId: string, _attempt: number, _attrs: Record<string, string | number> = {}): AttemptSpan {
  return { traceparent: undefined, end: () => {} };
}
