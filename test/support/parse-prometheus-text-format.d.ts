/** Types for parse-prometheus-text-format 1.1 (the package ships none): its prom2json-shaped output. */
declare module 'parse-prometheus-text-format' {
  /** One series of a family; values are the exposition's strings ("1.5", "+Inf", "NaN"). */
  export interface PromSample {
    labels?: Record<string, string>;
    value?: string; // counters, gauges, untyped
    buckets?: Record<string, string>; // histograms: upper bound (le) → cumulative count
    quantiles?: Record<string, string>; // summaries
    count?: string;
    sum?: string;
    timestamp_ms?: string;
  }

  export interface PromFamily {
    name: string;
    help: string;
    type: 'COUNTER' | 'GAUGE' | 'HISTOGRAM' | 'SUMMARY' | 'UNTYPED';
    metrics: PromSample[];
  }

  /** Throws (InvalidLineError) on a line that is not valid text exposition. */
  export default function parsePrometheusTextFormat(text: string): PromFamily[];
}
