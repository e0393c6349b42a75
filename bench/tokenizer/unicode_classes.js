#!/usr/bin/env node
// Compares the character classes of the GPT-2 pre-tokenizer regex (\p{L}, \p{N}, \s, other) as
// HF tokenizers (Oniguruma) sees them with ours, on every code point:
//   node unicode_classes.js OURS.bin     (OURS.bin from `tokenizer_bench classes OURS.bin`)
// HF's class of c: "aca" is one word if c is a letter, "1c1" if a number, "!c!" if other.
'use strict';
const fs = require('fs');
const tk = require('tokenizers');

const ours = fs.readFileSync(process.argv[2]);
const pre = tk.byteLevelPreTokenizer(false, true);
const oneWord = (s) => pre.preTokenizeString(s).length === 1;
const differences = [];
for (let cp = 0; cp < 0x110000; cp++) {
  if (cp >= 0xd800 && cp <= 0xdfff) continue;
  const c = String.fromCodePoint(cp);
  const hf = oneWord('a' + c + 'a') ? 'L' : oneWord('1' + c + '1') ? 'N' : oneWord('!' + c + '!') ? 'O' : 'S';
  const mine = String.fromCharCode(ours[cp]);
  if (hf !== mine) differences.push([cp, hf, mine]);
}
// Report differences as ranges of consecutive code points with the same pair of classes.
const ranges = [];
for (const [cp, hf, mine] of differences) {
  const last = ranges[ranges.length - 1];
  if (last && last.end === cp - 1 && last.hf === hf && last.mine === mine) last.end = cp;
  else ranges.push({ start: cp, end: cp, hf, mine });
}
const hex = (n) => 'U+' + n.toString(16).toUpperCase().padStart(4, '0');
for (const r of ranges) console.log(`${hex(r.start)}..${hex(r.end)}  HF ${r.hf}  ours ${r.mine}`);
console.log(`code points classified differently: ${differences.length} of ${0x110000 - 0x800}`);
