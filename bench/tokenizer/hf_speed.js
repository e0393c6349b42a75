#!/usr/bin/env node
// HF tokenizers' encoding speed on one thread (run with RAYON_NUM_THREADS=1
// TOKENIZERS_PARALLELISM=false): node hf_speed.js TOKENIZER.json FILE [whole|lines] [repeats]
// whole: the file as one string (one encode call); lines: one encodeBatch call over its lines.
// Prints one JSON line like tokenizer_bench's.
'use strict';
const fs = require('fs');
const { Tokenizer } = require('tokenizers');

async function main() {
  const [tokPath, file, mode = 'whole', repeatsArg = '5'] = process.argv.slice(2);
  const tok = Tokenizer.fromFile(tokPath);
  const bytes = fs.readFileSync(file);
  const text = bytes.toString('utf8');
  const lines = text.split('\n').filter((l) => l.length > 0);
  const repeats = Number(repeatsArg);
  let best = Infinity, total = 0, first = 0, tokens = 0;
  for (let r = 0; r < repeats; r++) {
    const start = process.hrtime.bigint();
    if (mode === 'whole') {
      tokens = (await tok.encode(text)).getLength();
    } else {
      tokens = 0;
      for (const enc of await tok.encodeBatch(lines)) tokens += enc.getLength();
    }
    const s = Number(process.hrtime.bigint() - start) / 1e9;
    if (r === 0) first = s;
    best = Math.min(best, s);
    total += s;
  }
  const mb = bytes.length / 1e6;
  console.log(JSON.stringify({ engine: 'hf-tokenizers-0.23.2', mode, bytes: bytes.length, tokens, repeats,
    first_mb_s: +(mb / first).toFixed(3), best_mb_s: +(mb / best).toFixed(3), mean_mb_s: +(mb / (total / repeats)).toFixed(3) }));
}

main().catch((e) => { console.error(`error: ${e.message}`); process.exit(1); });
