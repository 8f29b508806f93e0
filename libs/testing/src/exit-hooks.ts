/**
 * Process-exit hooks: synchronous clean-ups (kill a child server, remove a temp dir) that run
 * when the test process exits, normally or on SIGINT/SIGTERM/SIGHUP, so that nothing a test
 * started outlives it. A SIGKILL of the test process cannot be caught; see the README.
 */
type Hook = () => void;

const hooks = new Map<number, Hook>();
let nextId = 1;
let installed = false;
const SIGNALS = ["SIGINT", "SIGTERM", "SIGHUP"] as const;

function runAll(): void {
  const pending = [...hooks.values()].reverse();
  hooks.clear();
  for (const hook of pending) {
    try {
      hook();
    } catch {
      // Best effort at exit: one failing clean-up must not prevent the others.
    }
  }
}

function onSignal(signal: NodeJS.Signals): void {
  runAll();
  for (const s of SIGNALS) process.removeListener(s, onSignal);
  // Re-raise so the process ends the way it would have without our listener.
  if (process.listenerCount(signal) === 0) process.kill(process.pid, signal);
}

function install(): void {
  if (installed) return;
  installed = true;
  process.once("exit", runAll);
  for (const s of SIGNALS) process.on(s, onSignal);
}

/** Registers a synchronous clean-up; returns a function that unregisters it. */
export function onProcessExit(hook: Hook): () => void {
  install();
  const id = nextId++;
  hooks.set(id, hook);
  return () => {
    hooks.delete(id);
  };
}
