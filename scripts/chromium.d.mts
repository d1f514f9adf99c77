/** Types for scripts/chromium.mjs (plain JS so that scripts/run-tests.mjs can use it before tsx is loaded). */
export declare const CHROMIUM_ARGS: readonly string[];
export declare function findChromium(): Promise<{ path: string; source: string; version: string; env: Record<string, string> }>;
