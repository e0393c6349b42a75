#!/usr/bin/env node
// Variants of a byte-level BPE tokenizer.json that exercise each supported component, for the
// differential test:  node make_variants.js TOKENIZER.json OUT_DIR
// Writes OUT_DIR/<variant>.json and prints the variant names, one a line, each followed by
// "roundtrip" when decode(encode(text)) must give the text back.
'use strict';
const fs = require('fs');
const path = require('path');
const { Tokenizer } = require('tokenizers');

const LLAMA3_SPLIT = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const GPT2_SPLIT = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

const byteLevel = (addPrefixSpace, useRegex) =>
  ({ type: 'ByteLevel', add_prefix_space: addPrefixSpace, trim_offsets: true, use_regex: useRegex });
const split = (pattern, behavior, invert = false) => ({ type: 'Split', pattern, behavior, invert });

// Added tokens with every flag; ids as HF assigns them (a vocab token keeps its id).
function withAddedTokens(t) {
  let next = Object.keys(t.model.vocab).length;
  const add = (content, flags) => {
    const id = t.model.vocab[content] ?? next++;
    t.added_tokens.push({ id, content, single_word: false, lstrip: false, rstrip: false,
      normalized: true, special: false, ...flags });
  };
  add('<mask>', { lstrip: true, rstrip: true, normalized: false, special: true });
  add('fortune', { single_word: true });
  add('  ', {});
  add('cafe\u0301', {});
  add('|>', { rstrip: true, normalized: false });
  add('Q:', { lstrip: true });
  add('tt', { single_word: true, lstrip: true, rstrip: true, normalized: false });
  return t;
}

// Byte characters that no merge uses are removed from the vocab, so the unk token is needed.
function withUnk(t, fuse) {
  const used = new Set();
  for (const m of t.model.merges) for (const part of Array.isArray(m) ? m : m.split(' ')) used.add(part);
  for (const tok of Object.keys(t.model.vocab)) {
    if ([...tok].length === 1 && !used.has(tok) && t.model.vocab[tok] > 1) delete t.model.vocab[tok];
  }
  t.model.unk_token = '<|padding|>';
  t.model.fuse_unk = fuse;
  return t;
}

const VARIANTS = {
  base: [true, (t) => t],
  legacy_merges: [true, (t) => { t.model.merges = t.model.merges.map((m) => m.join(' ')); return t; }],
  nfc: [false, (t) => { t.normalizer = { type: 'NFC' }; return t; }],
  nfc_sequence: [false, (t) => { t.normalizer = { type: 'Sequence', normalizers: [{ type: 'NFC' }] }; return t; }],
  prefix_space: [false, (t) => { t.pre_tokenizer = byteLevel(true, true); return t; }],
  no_regex: [true, (t) => { t.pre_tokenizer = byteLevel(false, false); return t; }],
  split_llama3: [true, (t) => {
    t.pre_tokenizer = { type: 'Sequence', pretokenizers: [split({ Regex: LLAMA3_SPLIT }, 'Isolated'), byteLevel(false, false)] };
    return t;
  }],
  split_gpt2: [true, (t) => {
    t.pre_tokenizer = { type: 'Sequence', pretokenizers: [split({ Regex: GPT2_SPLIT }, 'Isolated'), byteLevel(false, false)] };
    return t;
  }],
  split_behaviors: [false, (t) => {
    t.pre_tokenizer = { type: 'Sequence', pretokenizers: [
      split({ String: '-' }, 'MergedWithPrevious'), split({ Regex: '\\p{N}+' }, 'Contiguous', true),
      split({ String: 'e' }, 'MergedWithNext'), split({ Regex: '\\s{2,}' }, 'Removed'),
      byteLevel(true, true)] };
    return t;
  }],
  added_tokens: [false, (t) => withAddedTokens(Object.assign(t, { normalizer: { type: 'NFC' } }))],
  added_tokens_raw: [false, (t) => withAddedTokens(t)],
  ignore_merges: [true, (t) => { t.model.ignore_merges = true; return t; }],
  unk: [false, (t) => withUnk(t, false)],
  unk_fused: [false, (t) => withUnk(t, true)],
  template: [false, (t) => {
    t.post_processor = { type: 'Sequence', processors: [
      { type: 'ByteLevel', add_prefix_space: true, trim_offsets: false, use_regex: true },
      { type: 'TemplateProcessing',
        single: [{ SpecialToken: { id: '<|endoftext|>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } },
          { SpecialToken: { id: '<|padding|>', type_id: 0 } }],
        pair: [{ Sequence: { id: 'A', type_id: 0 } }, { Sequence: { id: 'B', type_id: 1 } }],
        special_tokens: {
          '<|endoftext|>': { id: '<|endoftext|>', ids: [0], tokens: ['<|endoftext|>'] },
          '<|padding|>': { id: '<|padding|>', ids: [1], tokens: ['<|padding|>'] } } }] };
    return t;
  }],
};

function main() {
  const [source, outDir] = process.argv.slice(2);
  fs.mkdirSync(outDir, { recursive: true });
  const text = fs.readFileSync(source, 'utf8');
  for (const [name, [roundtrip, make]] of Object.entries(VARIANTS)) {
    const file = path.join(outDir, `${name}.json`);
    fs.writeFileSync(file, JSON.stringify(make(JSON.parse(text))));
    Tokenizer.fromFile(file);  // HF must accept it too
    console.log(roundtrip ? `${name} roundtrip` : name);
  }
}

main();
