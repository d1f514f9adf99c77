/**
 * msgpackr decodes strings with its native extractor (msgpackr-extract) where a prebuilt binary exists for the
 * platform, and with its pure-JS decoder elsewhere. Both must give the protocol the same answer for every frame:
 * each fixture, each schema mutation of it, and frames that are not valid msgpack or not valid UTF-8. This runs the
 * same corpus in a child with MSGPACKR_NATIVE_ACCELERATION_DISABLED=true and compares outcome by outcome.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { isNativeAccelerationEnabled } from 'msgpackr';
import { decodeFrame, encodeMessage } from '../../protocol/codec.ts';
import { ProtocolError } from '../../protocol/errors.ts';
import { families } from './fixtures.ts';
import { mutationsOf } from './mutations.ts';

/** The corpus: name → frame. */
function corpus(): Array<[string, Uint8Array]> {
  const frames: Array<[string, Uint8Array]> = [];
  for (const family of families) {
    for (const m of mutationsOf(family)) frames.push([`${m.family} ${m.type}: ${m.name}`, encodeMessage(m.msg as { type: string })]);
  }
  const long = encodeMessage({ type: 'heartbeat', note: 'ü'.repeat(40) + '🖥'.repeat(40) }); // strings the extractor batches
  frames.push(['long multi-byte strings', long]);
  // A str8 of 3 bytes holding an invalid UTF-8 sequence, inside a map with a string type.
  frames.push(['invalid utf-8 in a value', Uint8Array.from([0x82, 0xa4, ...Buffer.from('type'), 0xa1, 0x78, 0xa1, 0x76, 0xa3, 0xff, 0xfe, 0xfd])]);
  frames.push(['truncated map', long.subarray(0, long.byteLength - 5)]);
  frames.push(['a bare string', encodeMessage('x' as unknown as { type: string })]);
  return frames;
}

/** What decoding and parsing each frame gives: the message as JSON, or the error's code and message. */
function outcomes(): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [name, frame] of corpus()) {
    try {
      const msg = decodeFrame(frame);
      const family = families.find((f) => Object.prototype.hasOwnProperty.call(f.schemas, msg.type));
      out[name] = JSON.stringify(family ? family.parse(msg) : msg);
    } catch (err) {
      out[name] = err instanceof ProtocolError ? `${err.code}: ${err.message}` : `THREW ${(err as Error).message}`;
    }
  }
  return out;
}

if (process.env.CODEC_FALLBACK_CHILD) {
  process.stdout.write(JSON.stringify({ native: isNativeAccelerationEnabled, outcomes: outcomes() }));
} else {
  test("msgpackr's JS decoder and its native extractor give the same message or the same error for every frame", () => {
    const child = spawnSync(process.execPath, ['--import', 'tsx', fileURLToPath(import.meta.url)], {
      env: { ...process.env, CODEC_FALLBACK_CHILD: '1', MSGPACKR_NATIVE_ACCELERATION_DISABLED: 'true' },
      encoding: 'utf8',
      maxBuffer: 64 * 1024 * 1024,
    });
    assert.equal(child.status, 0, child.stderr);
    const js = JSON.parse(child.stdout) as { native: boolean; outcomes: Record<string, string> };
    assert.equal(js.native, false, 'the child runs the pure-JS decoder');
    // The prebuilt extractor ships for these platforms; elsewhere both sides run the JS decoder.
    const prebuilt = ['linux-x64', 'linux-arm64', 'linux-arm', 'darwin-x64', 'darwin-arm64', 'win32-x64'].includes(`${process.platform}-${process.arch}`);
    assert.equal(isNativeAccelerationEnabled, prebuilt, 'this process runs the native extractor where one is prebuilt');
    const native = outcomes();
    assert.ok(Object.keys(native).length > 200, `the corpus has ${Object.keys(native).length} frames`);
    const differ = Object.keys(native).filter((k) => native[k] !== js.outcomes[k]).map((k) => `${k}\n  native: ${native[k]}\n  js:     ${js.outcomes[k]}`);
    assert.deepEqual(differ, []);
    assert.ok(Object.values(native).some((o) => o.startsWith('PRT_ERR_MALFORMED')), 'the corpus includes malformed frames');
    assert.ok(!Object.values(native).some((o) => o.startsWith('THREW')), 'every failure is a ProtocolError');
  });
}
