// Renders a LuCI view of luci-app-bpfqos outside LuCI: the view file is evaluated the way LuCI
// evaluates it (a function body ending in `return view.extend(...)`), with small stand-ins for
// the LuCI runtime it uses (E, _, String.prototype.format, view, rpc, poll, dom, L). Used by
// tests/packaging.rs to check that the status page renders any status document (real ones
// from a running daemon, an empty object, a daemon that is down) without throwing, and shows
// what it should.
//
// node tests/luci/render.js VIEW.js STATUS.json [STATUS.json...]  -> the text of the last
// rendering on stdout; every document is rendered in turn, 5 s apart (rates need two).
'use strict';
const fs = require('fs');

function flatten(children, out) {
	if (children == null || children === '')
		return out;
	if (Array.isArray(children)) {
		children.forEach((c) => flatten(c, out));
		return out;
	}
	out.push(children);
	return out;
}

function E(tag, attrs, children) {
	if (Array.isArray(tag))
		return { tag: '#fragment', attrs: {}, children: flatten(tag, []) };
	if (attrs == null || typeof attrs !== 'object' || Array.isArray(attrs) || attrs.tag)
		children = attrs, attrs = {};
	const node = { tag: tag, attrs: attrs, children: flatten(children, []) };
	if (typeof tag === 'string' && tag.charAt(0) === '<') {
		if (!/^<svg[\s\S]*<\/svg>$/.test(tag))
			throw new Error('unexpected markup: ' + tag.slice(0, 40));
		node.tag = '#markup';
	}
	node.appendChild = (c) => node.children.push(c);
	return node;
}

function text(node) {
	if (node == null)
		return '';
	if (typeof node === 'string' || typeof node === 'number')
		return String(node);
	if (node.tag === '#markup')
		return '[chart]';
	const inner = node.children.map(text).join(node.tag === 'tr' ? ' | ' : ' ');
	return ['tr', 'p', 'h3', 'div', 'table'].includes(node.tag) ? inner + '\n' : inner;
}

// LuCI's String.prototype.format, for the conversions the views use.
String.prototype.format = function() {
	const args = Array.from(arguments);
	return this.replace(/%(%|(\d+)?(\.(\d+))?([sdftm]))/g, (all, pct, base, _d, prec, conv) => {
		if (pct === '%')
			return '%';
		if (!args.length)
			throw new Error('format: too few arguments for ' + this);
		const v = args.shift();
		switch (conv) {
		case 's': return String(v);
		case 'd': return String(Math.trunc(+v));
		case 'f': return (+v).toFixed(prec ? +prec : 6);
		case 't': return (+v) + 's';
		case 'm': {
			const b = +(base || 1000), units = ['', 'k', 'M', 'G', 'T'];
			let x = +v, i = 0;
			if (!isFinite(x))
				throw new Error('format: %m of ' + v);
			while (x >= b && i < units.length - 1)
				x /= b, i++;
			return x.toFixed(prec ? +prec : 2) + ' ' + units[i];
		}
		}
		return all;
	});
};

const stubs = {
	view: { extend: (o) => o },
	dom: { content: () => {} },
	poll: { add: () => {} },
	rpc: { declare: () => () => Promise.resolve(null) },
	E: E,
	_: (s) => s,
	L: { resolveDefault: (p) => p },
};

const [file, ...docs] = process.argv.slice(2);
const body = fs.readFileSync(file, 'utf8');
const make = new Function(...Object.keys(stubs), body);
const v = make(...Object.values(stubs));
if (typeof v.renderStatus !== 'function')
	throw new Error('the view has no renderStatus');

let out = '';
let t = 1000000;
for (const d of docs) {
	const st = (d === 'null') ? null : JSON.parse(fs.readFileSync(d, 'utf8'));
	out = text(v.renderStatus(st, t));
	t += 5000;
}
process.stdout.write(out);
