#!/usr/bin/env node
// The deterministic model of the real-n8n tests: a `cli` provider's command
// (`node fake-model.mjs --system={system}`, prompt on stdin). It answers by
// what Orch asks, so every flow gets the same answer every run:
// - function calling (Orch's tool-call instructions): calls the echo tool once,
//   then, with a "Tool result" in the conversation, answers with what it said;
// - the planner: a plan that calls everything.echo and writes from its output;
// - the session summary: a fixed Markdown summary;
// - "slowly" in the prompt: the same, after 6 s ("until cancelled": after 60 s);
// - anything else: "Orch answer: <the prompt's last line>".
import { readFileSync } from 'node:fs';

const system = (process.argv.find((a) => a.startsWith('--system=')) || '--system=').slice('--system='.length);
const prompt = readFileSync(0, 'utf8');
const all = `${system}\n${prompt}`;
// "slowly" in the prompt: take 6 s (a job to cancel, an execution caught waiting).
// A running job's cancellation reaches its worker with the next heartbeat
// (every lease/3, 10 s by default), so the job to cancel outlasts that.
if (prompt.includes('slowly')) await new Promise((r) => setTimeout(r, prompt.includes('until cancelled') ? 60000 : 6000));
const out = (value) => process.stdout.write(typeof value === 'string' ? `${value}\n` : `${JSON.stringify(value)}\n`);

if (all.includes('You are connected to an application that runs functions for you')) {
  const result = /Echo: ([^"\\\]]*)/.exec(prompt.slice(prompt.lastIndexOf('Tool result')));
  if (prompt.includes('Tool result') && result) {
    out({ content: `The echo tool said: ${result[1]}` });
  } else {
    const names = [...all.matchAll(/^- name: (\S+)$/gm)].map((m) => m[1]);
    const echo = names.find((n) => /(^|[._])echo$/.test(n));
    if (!echo) out({ content: `No echo tool among: ${names.join(', ')}` });
    else out({ tool_calls: [{ name: echo, arguments: { message: 'ping from n8n' } }] });
  }
} else if (all.includes('You are the planner of Orch')) {
  const request = (/Request:\n([\s\S]*?)\n\n/.exec(prompt) || [, 'the request'])[1].trim();
  out('```json');
  out({
    nodes: [
      { id: 'facts', tool: 'everything.echo', args: { message: request } },
      { id: 'write', llm: { prompt: 'Write it up: {{nodes.facts.output}}' } },
    ],
    output: { report: '{{nodes.write.output}}' },
  });
  out('```');
} else if (all.includes('You summarise conversations')) {
  out('## Summary\n\n- The user asked about n8n and Orch.\n- Orch answered deterministically.');
} else {
  const lines = prompt.trim().split('\n').filter((l) => l.trim());
  out(`Orch answer: ${(lines[lines.length - 1] || '').replace(/^User: /, '')}`);
}
