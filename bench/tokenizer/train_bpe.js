#!/usr/bin/env node
// Trains a byte-level BPE with HF tokenizers (npm `tokenizers` 0.23.2) the way the test fixture
// was made: ByteLevel pre-tokenizer without prefix space, ByteLevel post-processor and decoder,
// the default BPE trainer (30,000 tokens), then <|endoftext|> and <|padding|> as special tokens.
//   node train_bpe.js CORPUS_FILE OUT.json
'use strict';
const fs = require('fs');
const tk = require('tokenizers');

const [corpus, out] = process.argv.slice(2);
if (!corpus || !out) {
  console.error('usage: node train_bpe.js CORPUS_FILE OUT.json');
  process.exit(2);
}
const tok = new tk.Tokenizer(tk.BPE.empty());
tok.setPreTokenizer(tk.byteLevelPreTokenizer(false, true));
tok.setPostProcessor(tk.byteLevelProcessing(false));
tok.train([corpus]);
tok.addSpecialTokens(['<|endoftext|>', '<|padding|>']);
tok.save(out);
// The node binding has no ByteLevel decoder constructor: write it into the file.
const json = JSON.parse(fs.readFileSync(out, 'utf8'));
json.decoder = { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true };
fs.writeFileSync(out, JSON.stringify(json));
const check = tk.Tokenizer.fromFile(out);
console.error(`${out}: ${check.getVocabSize(true)} tokens, ${json.model.merges.length} merges`);
