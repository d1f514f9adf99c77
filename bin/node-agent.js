#!/usr/bin/env node
// node-agent join <coordinator-url> --token TOKEN — see node-agent/cli.ts (run through tsx; no build step).
import { register } from 'tsx/esm/api';

register();
await import('../node-agent/cli.ts');
