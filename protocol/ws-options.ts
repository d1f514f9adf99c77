/**
 * WebSocket settings every link uses, so that benchmarks measure the product's own configuration.
 *
 * - No per-message deflate: tensors do not compress and deflate costs a core.
 * - Zero masking key on frames we send as a client. RFC 6455 masking protects browser-facing intermediaries from
 *   cache poisoning; our links run agent-to-agent (or agent-to-coordinator) and are authenticated by token, and
 *   ws skips the XOR pass entirely for an all-zero key (measured: 1.0 → 1.7 GB/s on loopback, ARCHITECTURE.md).
 * - bufferutil (a dependency) gives ws native masking/unmasking for the frames that are masked.
 */
import type { ClientOptions, ServerOptions } from 'ws';

/** Fills the masking key with zeros; ws then sends the payload as-is. */
export function zeroMask(mask: Uint8Array): void {
  mask.fill(0);
}

export function clientOptions(maxPayload: number): ClientOptions {
  return { perMessageDeflate: false, maxPayload, generateMask: zeroMask, skipUTF8Validation: true };
}

export function serverOptions(maxPayload: number): ServerOptions {
  return { perMessageDeflate: false, maxPayload, skipUTF8Validation: true };
}
