/**
 * The StateStore contract, written once and run against both implementations (SQLite in a temp folder, and the
 * in-memory one unit tests use), plus what only SQLite does: survive a restart, refuse a newer schema.
 */
import { after, describe, test, test as nodeTest } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { CoordinatorError } from '../../coordinator/errors.ts';
import { MemoryStateStore, SqliteStateStore, type NodeRecord, type StateStore } from '../../coordinator/store/state-store.ts';

const root = mkdtempSync(join(tmpdir(), 'meshtrain-state-test-'));
after(() => rmSync(root, { recursive: true, force: true }));
let dbCounter = 0;
const freshDbFile = () => join(root, `state-${++dbCounter}.db`);

function node(id: string, overrides: Partial<NodeRecord> = {}): NodeRecord {
  return {
    id,
    name: `name of ${id}`,
    status: 'alive',
    statusReason: 'joined',
    capabilities: {
      backend: 'wasm',
      cores: 4,
      memoryBytes: 8 * 2 ** 30,
      freeMemoryBytes: 2 ** 30,
      matmulGflops: 12.5,
      platform: 'linux-x64',
      nodeVersion: 'v20.19.0',
    },
    peerAddress: `ws://127.0.0.1:9${id.length}00`,
    agentVersion: '0.1.0',
    remoteAddress: '127.0.0.1:50000',
    firstSeenMs: 1000,
    lastSeenMs: 1000,
    secretHash: 'f'.repeat(64),
    ...overrides,
  };
}

const implementations: Array<{ name: string; open(): StateStore }> = [
  {
    name: 'SqliteStateStore',
    open: () => new SqliteStateStore(freshDbFile()),
  },
  {
    name: 'MemoryStateStore',
    open: () => new MemoryStateStore(),
  },
];

for (const impl of implementations) {
  describe(`${impl.name} (StateStore contract)`, () => {
    const test = (name: string, fn: () => void | Promise<void>) => nodeTest(name, fn);

    /** A fresh store per test, closed afterwards. */
    function withStore(fn: (store: StateStore) => void): () => void {
      return () => {
        const store = impl.open();
        try {
          fn(store);
        } finally {
          store.close();
        }
      };
    }

    test('an empty store has no nodes, no meta and no events', withStore((s) => {
      assert.deepEqual(s.listNodes(), []);
      assert.equal(s.getNode('nope'), undefined);
      assert.equal(s.getMeta('clusterId'), undefined);
      assert.deepEqual(s.nodeEvents('nope', 10), []);
    }));

    test('a node that was put is returned by get and list with every field intact', withStore((s) => {
      const n = node('node-a');
      s.putNode(n);
      assert.deepEqual(s.getNode('node-a'), n);
      assert.deepEqual(s.listNodes(), [n]);
    }));

    test('list returns nodes oldest first', withStore((s) => {
      s.putNode(node('late', { firstSeenMs: 3000, lastSeenMs: 3000 }));
      s.putNode(node('early', { firstSeenMs: 1000, lastSeenMs: 1000 }));
      s.putNode(node('middle', { firstSeenMs: 2000, lastSeenMs: 2000 }));
      assert.deepEqual(
        s.listNodes().map((n) => n.id),
        ['early', 'middle', 'late'],
      );
    }));

    test('putting a node again updates it but keeps when it was first seen', withStore((s) => {
      s.putNode(node('n', { firstSeenMs: 1000, lastSeenMs: 1000 }));
      s.putNode(node('n', { name: 'renamed', firstSeenMs: 9000, lastSeenMs: 9000, peerAddress: 'ws://10.0.0.2:1' }));
      const got = s.getNode('n')!;
      assert.equal(got.name, 'renamed');
      assert.equal(got.peerAddress, 'ws://10.0.0.2:1');
      assert.equal(got.lastSeenMs, 9000);
      assert.equal(got.firstSeenMs, 1000);
      assert.equal(s.listNodes().length, 1);
    }));

    test('returned records are copies: changing one does not change the store', withStore((s) => {
      s.putNode(node('n'));
      const got = s.getNode('n')!;
      got.name = 'mutated';
      got.capabilities.cores = 999;
      assert.equal(s.getNode('n')!.name, 'name of n');
      assert.equal(s.getNode('n')!.capabilities.cores, 4);
    }));

    test('the first put records a status event; a put with an unchanged status records none', withStore((s) => {
      s.putNode(node('n', { lastSeenMs: 1000 }));
      s.putNode(node('n', { lastSeenMs: 2000 }));
      assert.deepEqual(s.nodeEvents('n', 10), [{ nodeId: 'n', atMs: 1000, status: 'alive', reason: 'joined' }]);
    }));

    test('status changes are recorded as events, newest first, with their reasons and times', withStore((s) => {
      s.putNode(node('n', { lastSeenMs: 1000 }));
      s.setNodeStatus('n', 'dead', 'no heartbeat for 6 s (timeout 5 s)', 7000);
      s.putNode(node('n', { status: 'alive', statusReason: 'reconnected', lastSeenMs: 8000 }));
      s.setNodeStatus('n', 'left', 'shutting down (SIGTERM)', 9000);
      const got = s.getNode('n')!;
      assert.equal(got.status, 'left');
      assert.equal(got.statusReason, 'shutting down (SIGTERM)');
      assert.deepEqual(s.nodeEvents('n', 10), [
        { nodeId: 'n', atMs: 9000, status: 'left', reason: 'shutting down (SIGTERM)' },
        { nodeId: 'n', atMs: 8000, status: 'alive', reason: 'reconnected' },
        { nodeId: 'n', atMs: 7000, status: 'dead', reason: 'no heartbeat for 6 s (timeout 5 s)' },
        { nodeId: 'n', atMs: 1000, status: 'alive', reason: 'joined' },
      ]);
    }));

    test('events are limited to the newest ones and kept per node', withStore((s) => {
      s.putNode(node('a'));
      s.putNode(node('b'));
      for (let i = 0; i < 5; i++) s.setNodeStatus('a', i % 2 ? 'alive' : 'dead', `change ${i}`, 2000 + i);
      assert.deepEqual(
        s.nodeEvents('a', 2).map((e) => e.reason),
        ['change 4', 'change 3'],
      );
      assert.deepEqual(
        s.nodeEvents('b', 10).map((e) => e.reason),
        ['joined'],
      );
    }));

    test('touchNode moves the last-seen time and nothing else', withStore((s) => {
      const n = node('n', { lastSeenMs: 1000 });
      s.putNode(n);
      s.touchNode('n', 4321);
      assert.deepEqual(s.getNode('n'), { ...n, lastSeenMs: 4321 });
      assert.equal(s.nodeEvents('n', 10).length, 1, 'a heartbeat is not a status event');
    }));

    test('touching an unknown node is a no-op', withStore((s) => {
      s.touchNode('ghost', 5);
      assert.equal(s.getNode('ghost'), undefined);
      assert.deepEqual(s.listNodes(), []);
    }));

    test('setting the status of an unknown node changes nothing and does not throw', withStore((s) => {
      s.setNodeStatus('ghost', 'dead', 'never existed', 5);
      assert.equal(s.getNode('ghost'), undefined);
      assert.deepEqual(s.listNodes(), []);
    }));

    test('meta values are stored, overwritten and read back', withStore((s) => {
      s.setMeta('clusterId', 'cluster-1');
      s.setMeta('tokenHash', 'abc');
      s.setMeta('clusterId', 'cluster-2');
      assert.equal(s.getMeta('clusterId'), 'cluster-2');
      assert.equal(s.getMeta('tokenHash'), 'abc');
      assert.equal(s.getMeta('missing'), undefined);
    }));

    test('closing twice is harmless', () => {
      const s = impl.open();
      s.close();
      s.close();
    });
  });
}

describe('SqliteStateStore on disk', () => {
  test('nodes, events and meta survive closing and reopening the same file', () => {
    const file = freshDbFile();
    const first = new SqliteStateStore(file);
    first.setMeta('clusterId', 'cluster-x');
    first.putNode(node('keep', { lastSeenMs: 1000 }));
    first.setNodeStatus('keep', 'dead', 'connection lost (1006)', 2000);
    first.touchNode('keep', 2500);
    first.close();

    const second = new SqliteStateStore(file);
    try {
      assert.equal(second.getMeta('clusterId'), 'cluster-x');
      assert.deepEqual(second.getNode('keep'), node('keep', { status: 'dead', statusReason: 'connection lost (1006)', lastSeenMs: 2500 }));
      assert.deepEqual(
        second.nodeEvents('keep', 10).map((e) => `${e.atMs} ${e.status}`),
        ['2000 dead', '1000 alive'],
      );
      second.putNode(node('new', { firstSeenMs: 3000, lastSeenMs: 3000 }));
      assert.deepEqual(
        second.listNodes().map((n) => n.id),
        ['keep', 'new'],
      );
    } finally {
      second.close();
    }
  });

  test('a database with a newer schema version than supported is refused with CRD_ERR_STORAGE', () => {
    const file = freshDbFile();
    const db = new Database(file);
    db.pragma('user_version = 99');
    db.close();
    assert.throws(
      () => new SqliteStateStore(file),
      (err: unknown) => {
        assert.ok(err instanceof CoordinatorError);
        assert.equal(err.code, 'CRD_ERR_STORAGE');
        assert.ok(err.message.includes(file), `the message names the file: ${err.message}`);
        assert.match(err.message, /schema version 99 is newer/);
        return true;
      },
    );
  });

  test('a file that is not a database is refused with CRD_ERR_STORAGE', async () => {
    const { writeFileSync } = await import('node:fs');
    const file = freshDbFile();
    writeFileSync(file, 'this is not an SQLite database, just some text that is long enough'.repeat(100));
    assert.throws(() => new SqliteStateStore(file), (err: unknown) => err instanceof CoordinatorError && err.code === 'CRD_ERR_STORAGE');
  });

  test('a path inside a missing folder is refused with CRD_ERR_STORAGE', () => {
    const file = join(root, 'no', 'such', 'dir', 'state.db');
    assert.throws(() => new SqliteStateStore(file), (err: unknown) => err instanceof CoordinatorError && err.code === 'CRD_ERR_STORAGE');
  });
});
