#!/usr/bin/env node
// gateway serve … — see gateway/cli.ts (run through tsx; no build step).
// This is where the model backend factory is wired in once model/ provides one:
//   runCli(argv, { backendFactory: (await import('../model/…')).createBackend })
import { register } from 'tsx/esm/api';

register();
const { runCli } = await import('../gateway/cli.ts');
process.exitCode = await runCli(process.argv.slice(2), {});
setTimeout(() => process.exit(), 100).unref();
