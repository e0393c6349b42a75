#!/usr/bin/env node
// HF tokenizers itself (npm `tokenizers` 0.23.2, its node binding) as the reference:
//   node oracle.js TOKENIZER.json TEXTS.jsonl    prints each text's ids as a JSON array, one line
//       per input line (each input line is one JSON string)
// Install next to this file: npm install --no-save tokenizers@0.23.2
'use strict';
const fs = require('fs');
const { Tokenizer } = require('tokenizers');

async function main() {
  const [tokenizerPath, textsPath] = process.argv.slice(2);
  if (!tokenizerPath || !textsPath) {
    console.error('usage: node oracle.js TOKENIZER.json TEXTS.jsonl');
    process.exit(2);
  }
  const tok = Tokenizer.fromFile(tokenizerPath);
  const texts = fs.readFileSync(textsPath, 'utf8').split('\n').filter((l) => l.length > 0)
    .map((l) => JSON.parse(l));
  const out = [];
  const batch = 1000;
  for (let i = 0; i < texts.length; i += batch) {
    for (const enc of await tok.encodeBatch(texts.slice(i, i + batch))) {
      out.push(JSON.stringify(enc.getIds()));
    }
  }
  process.stdout.write(out.join('\n') + (out.length ? '\n' : ''));
}

main().catch((e) => {
  console.error(`error: ${e.message}`);
  process.exit(1);
});
