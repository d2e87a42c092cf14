// Copies the node's icon next to its compiled file (tsc copies only .ts output).
import { copyFileSync, mkdirSync } from 'node:fs';
mkdirSync('dist/nodes/Orch', { recursive: true });
copyFileSync('nodes/Orch/orch.svg', 'dist/nodes/Orch/orch.svg');
