import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { MAX_SESSIONS, SESSION_COOKIE, SESSION_IDLE_MS, SessionStore, sessionCookie, sessionIdOf } from '../../coordinator/api/sessions.ts';

describe('SessionStore', () => {
  test('accepts a session it created and refuses one it did not', () => {
    const s = new SessionStore();
    const id = s.create();
    assert.equal(s.touch(id), true);
    assert.equal(s.touch(`${id}x`), false);
    assert.equal(s.touch(undefined), false);
  });

  test('expires a session left idle, and using one restarts its clock', () => {
    let now = 0;
    const s = new SessionStore(() => now);
    const used = s.create(), idle = s.create();
    now = SESSION_IDLE_MS - 1;
    assert.equal(s.touch(used), true);
    now = SESSION_IDLE_MS + 1;
    assert.equal(s.touch(idle), false);
    assert.equal(s.touch(used), true);
  });

  test('ends a session on logout', () => {
    const s = new SessionStore();
    const id = s.create();
    s.end(id);
    assert.equal(s.touch(id), false);
  });

  test('holds at most MAX_SESSIONS, dropping the least recently used', () => {
    const s = new SessionStore();
    const first = s.create(), second = s.create();
    s.touch(first);
    for (let i = 0; i < MAX_SESSIONS - 1; i++) s.create();
    assert.equal(s.touch(second), false);
    assert.equal(s.touch(first), true);
  });
});

describe('session cookies', () => {
  test('finds the session id among other cookies', () => {
    assert.equal(sessionIdOf(`a=1; ${SESSION_COOKIE}=abc_-9; b=2`), 'abc_-9');
    assert.equal(sessionIdOf('a=1'), undefined);
    assert.equal(sessionIdOf(undefined), undefined);
    assert.equal(sessionIdOf(`${SESSION_COOKIE}=`), undefined);
  });

  test('are HttpOnly and SameSite=Strict, and Secure over HTTPS', () => {
    assert.match(sessionCookie('x', false), /HttpOnly; SameSite=Strict/);
    assert.doesNotMatch(sessionCookie('x', false), /Secure/);
    assert.match(sessionCookie('x', true), /; Secure$/);
  });
});
