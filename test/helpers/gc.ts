/**
 * Collects garbage until unreachable tensors are released, so that a count of live native
 * handles holds only tensors something still refers to. Earlier tests leave garbage (tensors
 * made outside a scope); its collection, at a moment that depends on the machine's load, would
 * otherwise move the count in the middle of a leak check.
 */
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

export async function collectGarbage(): Promise<void> {
  setFlagsFromString('--expose-gc');
  const gc = runInNewContext('gc') as () => void;
  for (let i = 0; i < 3; i++) {
    gc();
    await new Promise((r) => setImmediate(r)); // finalizers may run after the collection
  }
}
