#!/usr/bin/env node
// coordinator start|nodes|selfcheck … — see coordinator/cli/index.ts (run through tsx; no build step).
import { register } from 'tsx/esm/api';

register();
await import('../coordinator/cli/index.ts');
