'use strict';
'require view';
'require dom';
'require poll';
'require rpc';

// Live view of `ubus call bpfqos status` (the daemon's status document, src/status.rs).
// Every field is optional here: an older or newer daemon, a daemon that is down, or one that
// does not shape shows what it has and nothing breaks. Rates are computed in the browser from
// the byte counters of two consecutive polls (the daemon reports totals); the charts keep the
// last HISTORY samples of this page's lifetime.

var callStatus = rpc.declare({
	object: 'bpfqos',
	method: 'status',
	expect: { '': {} }
});

var POLL_S = 5;
var HISTORY = 60;

// Counter snapshots and rate history, by key ('up:wan', 'circuit-down:guest', 'flow:...').
var last = null;
var history = {};

/* "12.3 ms (tick), last minute 4.0 ms (request)"; "-" before the daemon reports one. */
function stall(ev) {
	var max = num(ev.max_ms), recent = num(ev.max_last_minute_ms);
	if (max == null)
		return '-';
	var s = '%.1f ms'.format(max) + (ev.max_what != null ? ' (' + String(ev.max_what) + ')' : '');
	if (recent != null)
		s += ', ' + _('last minute') + ' ' + '%.1f ms'.format(recent) +
			(ev.max_last_minute_what != null ? ' (' + String(ev.max_last_minute_what) + ')' : '');
	return s;
}

function num(v) {
	return (typeof v === 'number' && isFinite(v)) ? v : null;
}

function kbitRate(kbit) {
	if (num(kbit) === null)
		return '-';
	if (+kbit === 0)
		return _('not shaped');
	return '%1000.1mbit/s'.format(kbit * 1000);
}

function limitText(kbit) {
	return (num(kbit) === null || +kbit === 0) ? _('no limit') : '%1000.1mbit/s'.format(kbit * 1000);
}

function bps(v) {
	return (num(v) === null) ? '-' : '%1000.1mbit/s'.format(v);
}

function bytes(v) {
	return (num(v) === null) ? '-' : '%1024.1mB'.format(v);
}

function count(v) {
	return (num(v) === null) ? '-' : String(v);
}

function percent(part, whole) {
	if (num(part) === null || !num(whole))
		return '-';
	return '%d%%'.format(Math.round(100 * part / whole));
}

// Microseconds as milliseconds ('-' without a value).
function msText(us) {
	if (num(us) === null)
		return '-';
	return (us < 10000 ? (us / 1000).toFixed(2) : (us / 1000).toFixed(1)) + ' ms';
}

// One side of a latency summary ({min_us, median_us, p95_us, samples}, fields null without
// samples) as "min / median / p95 ms (n)"; '-' when there is nothing.
function rttText(side) {
	if (side == null || typeof side !== 'object' || !num(side.samples))
		return '-';

	var parts = [ 'min', 'median', 'p95' ].map(function(k) {
		if (num(side[k + '_us']) !== null)
			return (side[k + '_us'] / 1000).toFixed(1);
		return '?';
	});

	var text = '%s / %s / %s ms (%s)'.format(parts[0], parts[1], parts[2], count(side.samples));
	if (num(side.packets))
		text += ', %s %s'.format(percent(side.retransmits, side.packets), _('resent'));
	return text;
}

// A connection's latency ({wan_us, lan_us, ...}) as "WAN / LAN".
function flowRttText(r) {
	if (r == null || typeof r !== 'object')
		return '-';
	return '%s / %s'.format(msText(r.wan_us), msText(r.lan_us));
}

// Current shaper rate (autorate moves it) next to the configured one.
function shaperText(configured, current) {
	if (num(configured) === null)
		return kbitRate(current);
	if (num(current) === null || +current === +configured)
		return kbitRate(configured);
	return '%s (%s %s)'.format(kbitRate(current), _('configured'), kbitRate(configured));
}

function arr(v) {
	return Array.isArray(v) ? v : [];
}

function obj(v) {
	return (v != null && typeof v === 'object' && !Array.isArray(v)) ? v : {};
}

// Every byte counter of a status document worth a rate, by key.
function counters(st) {
	var c = {};

	arr(st.interfaces).forEach(function(i) {
		var sh = obj(i.shaper);
		if (num(obj(sh.upload).bytes) !== null)
			c['up:' + i.name] = sh.upload.bytes;
		if (num(obj(sh.download).bytes) !== null)
			c['down:' + i.name] = sh.download.bytes;
	});
	arr(st.circuits).forEach(function(ci) {
		if (num(obj(ci.upload).bytes) !== null)
			c['circuit-up:' + ci.name] = ci.upload.bytes;
		if (num(obj(ci.download).bytes) !== null)
			c['circuit-down:' + ci.name] = ci.download.bytes;
	});
	arr(st.flows).forEach(function(f) {
		if (num(f.bytes) !== null)
			c['flow:' + f.orig] = f.bytes;
	});
	if (num(obj(st.offload).bytes) !== null)
		c['offload'] = st.offload.bytes;

	return c;
}

// Rates in bit/s since the previous poll (null where there is no previous value, or the
// counter went backwards: the daemon restarted or the shaper was rebuilt).
function sample(st, now) {
	var cur = counters(st),
	    rates = {};

	Object.keys(cur).forEach(function(k) {
		if (last && last.c[k] != null && cur[k] >= last.c[k] && now > last.t)
			rates[k] = (cur[k] - last.c[k]) * 8 / ((now - last.t) / 1000);
		else
			rates[k] = null;

		if (k.indexOf('up:') === 0 || k.indexOf('down:') === 0) {
			var h = history[k] || (history[k] = []);
			h.push(rates[k]);
			while (h.length > HISTORY)
				h.shift();
		}
	});

	arr(st.interfaces).forEach(function(i) {
		var r = obj(i.rtt);
		[ 'wan', 'lan' ].forEach(function(side) {
			var k = 'rtt-' + side + ':' + i.name,
			    h = history[k] || (history[k] = []);
			h.push(num(obj(r[side]).median_us));
			while (h.length > HISTORY)
				h.shift();
		});
	});

	last = { t: now, c: cur };
	return rates;
}

// An SVG plot of sample series ([{ samples, colour }], newest last) on a 0..max scale, with
// dashed horizontal lines at `limits` ([{ value, colour }]) and a legend; `n`: points across
// (default: the page's own history length).
function plot(series, limits, max, legend, n) {
	var w = 600, h = 120, points = Math.max(2, n || HISTORY);

	function line(samples, colour) {
		var pts = [];
		samples.forEach(function(v, i) {
			if (num(v) === null)
				return;
			var x = (points - samples.length + i) * w / (points - 1),
			    y = h - (v / max) * (h - 4) - 2;
			pts.push(x.toFixed(1) + ',' + y.toFixed(1));
		});
		return pts.length ? '<polyline fill="none" stroke="' + colour + '" stroke-width="2" points="' + pts.join(' ') + '"/>' : '';
	}

	function limit(v, colour) {
		if (!num(v))
			return '';
		var y = (h - (v / max) * (h - 4) - 2).toFixed(1);
		return '<line x1="0" x2="' + w + '" y1="' + y + '" y2="' + y + '" stroke="' + colour + '" stroke-dasharray="4 4" stroke-width="1"/>';
	}

	return E('div', { 'style': 'max-width:' + w + 'px' }, [
		E('<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 ' + w + ' ' + h + '" width="100%" height="' + h + '" preserveAspectRatio="none" style="border:1px solid #ccc">' +
			limits.map(function(l) { return limit(l.value, l.colour); }).join('') +
			series.map(function(sr) { return line(sr.samples, sr.colour); }).join('') + '</svg>'),
		E('div', { 'style': 'font-size:90%' }, legend)
	]);
}

// Upload and download throughput (bit/s), scaled to the larger of the shaped rates and the
// largest sample; the configured rates as dashed lines.
function chart(name, upKbit, downKbit) {
	var up = history['up:' + name] || [],
	    down = history['down:' + name] || [],
	    max = Math.max(1, (num(upKbit) || 0) * 1000, (num(downKbit) || 0) * 1000);

	up.concat(down).forEach(function(v) {
		if (num(v) !== null && v > max)
			max = v;
	});

	return plot([ { samples: up, colour: '#1f77b4' }, { samples: down, colour: '#2ca02c' } ],
		[ { value: num(upKbit) && upKbit * 1000, colour: '#1f77b4' },
		  { value: num(downKbit) && downKbit * 1000, colour: '#2ca02c' } ],
		max, [
			E('span', { 'style': 'color:#1f77b4' }, '\u25a0 ' + _('Upload')), ' ',
			E('span', { 'style': 'color:#2ca02c' }, '\u25a0 ' + _('Download')), ' \u2014 ',
			_('last %d minutes, top: %s').format(Math.round(HISTORY * POLL_S / 60), bps(max))
		]);
}

// WAN-side and LAN-side median latency of an interface's flows (µs), over the page's life.
function latencyChart(name) {
	var wan = history['rtt-wan:' + name] || [],
	    lan = history['rtt-lan:' + name] || [],
	    max = 1000;

	wan.concat(lan).forEach(function(v) {
		if (num(v) !== null && v > max)
			max = v;
	});

	return plot([ { samples: wan, colour: '#d62728' }, { samples: lan, colour: '#9467bd' } ], [],
		max, [
			E('span', { 'style': 'color:#d62728' }, '\u25a0 ' + _('WAN side (median)')), ' ',
			E('span', { 'style': 'color:#9467bd' }, '\u25a0 ' + _('LAN side (median)')), ' \u2014 ',
			_('last %d minutes, top: %s').format(Math.round(HISTORY * POLL_S / 60), msText(max))
		]);
}

function table(headers, rows, empty) {
	var t = E('table', { 'class': 'table' }, [
		E('tr', { 'class': 'tr table-titles' }, headers.map(function(h) {
			return E('th', { 'class': 'th' }, h);
		}))
	]);

	if (rows.length === 0)
		t.appendChild(E('tr', { 'class': 'tr placeholder' }, [
			E('td', { 'class': 'td', 'colspan': headers.length }, E('em', {}, empty))
		]));

	rows.forEach(function(cells) {
		t.appendChild(E('tr', { 'class': 'tr' }, cells.map(function(c) {
			return E('td', { 'class': 'td' }, (c == null) ? '-' : c);
		})));
	});

	return t;
}

function keyValues(rows) {
	return E('table', { 'class': 'table' }, rows.map(function(r) {
		return E('tr', { 'class': 'tr' }, [
			E('td', { 'class': 'td left', 'width': '33%' }, r[0]),
			E('td', { 'class': 'td left' }, (r[1] == null) ? '-' : String(r[1]))
		]);
	}));
}

function section(title, content) {
	return E('div', { 'class': 'cbi-section' }, [ E('h3', {}, title) ].concat(content));
}

// Autorate on an interface (status `interfaces[].autorate`): rates against bounds, state,
// the latest decisions, and its own 5-minute history (rates, throughput, excess delay).
function autorateContent(a) {
	var rows = [], decisions = [], hist = obj(a.history),
	    n = Math.max(arr(hist.upload_kbit).length, arr(hist.download_kbit).length, 2),
	    mins = Math.round(n * (num(hist.step_s) || 2) / 60), max = 1, emax = 1000;

	[ [ _('Upload'), a.upload ], [ _('Download'), a.download ] ].forEach(function(d) {
		var x = d[1];
		if (x == null || typeof x !== 'object')
			return;
		rows.push([ d[0], kbitRate(x.rate_kbit), kbitRate(x.base_kbit),
			kbitRate(x.min_kbit) + ' \u2013 ' + kbitRate(x.max_kbit),
			(num(x.achieved_kbit) === null) ? '-' : bps(x.achieved_kbit * 1000),
			(num(x.load_pct) === null) ? '-' : x.load_pct + ' %' ]);
		max = Math.max(max, num(x.max_kbit) || 0);
	});

	arr(a.decisions).slice(0, 5).forEach(function(d) {
		d = obj(d);
		decisions.push([ (num(d.ago_s) === null) ? '-' : _('%.1f s ago').format(d.ago_s),
			d.direction, kbitRate(d.from_kbit) + ' \u2192 ' + kbitRate(d.to_kbit), d.why || d.reason ]);
	});

	arr(hist.excess_us).concat([ num(a.threshold_us) || 0 ]).forEach(function(v) {
		if (num(v) !== null && v > emax)
			emax = v;
	});

	return [
		E('h4', {}, _('Autorate')),
		keyValues([
			[ _('Line'), a.bloated ? _('bufferbloat: cutting') : _('ok') ],
			[ _('Latency above the connections\' base (25th percentile / median)'),
			  msText(a.excess_p25_us) + ' / ' + msText(a.excess_median_us) + ' \u2014 ' +
			  _('threshold %s').format(msText(a.threshold_us)) ],
			[ _('Rate changes (of which cuts for bufferbloat)'), count(a.changes) + ' (' + count(a.cuts) + ')' ],
			[ _('Failed changes (retried)'), count(a.failures) + (a.last_error ? ': ' + a.last_error : '') ]
		]),
		table([ _('Direction'), _('Rate now'), _('Configured'), _('Range'), _('Carrying'), _('Load') ],
		      rows, _('No direction under autorate')),
		plot([ { samples: arr(hist.upload_kbit), colour: '#1f77b4' },
		       { samples: arr(hist.download_kbit), colour: '#2ca02c' },
		       { samples: arr(hist.upload_achieved_kbit), colour: '#aec7e8' },
		       { samples: arr(hist.download_achieved_kbit), colour: '#98df8a' } ],
		     [], max, [
			E('span', { 'style': 'color:#1f77b4' }, '\u25a0 ' + _('Upload rate')), ' ',
			E('span', { 'style': 'color:#2ca02c' }, '\u25a0 ' + _('Download rate')), ' ',
			E('span', { 'style': 'color:#aec7e8' }, '\u25a0 ' + _('Upload carried')), ' ',
			E('span', { 'style': 'color:#98df8a' }, '\u25a0 ' + _('Download carried')), ' \u2014 ',
			_('last %d minutes, top: %s').format(mins, kbitRate(max))
		], n),
		plot([ { samples: arr(hist.excess_us), colour: '#d62728' } ],
		     [ { value: num(a.threshold_us), colour: '#d62728' } ], emax, [
			E('span', { 'style': 'color:#d62728' }, '\u25a0 ' + _('Latency above base (dashed: threshold)')), ' \u2014 ',
			_('last %d minutes, top: %s').format(mins, msText(emax))
		], n),
		table([ _('When'), _('Direction'), _('Change'), _('Why') ], decisions, _('No change yet'))
	];
}

function shaperSection(i, rates) {
	var sh = obj(i.shaper),
	    rows = [],
	    tins = [];

	[ [ _('Upload'), sh.upload, 'up:' ], [ _('Download'), sh.download, 'down:' ] ].forEach(function(d) {
		var s = d[1];
		if (s == null || typeof s !== 'object')
			return;
		var r = rates[d[2] + i.name];
		rows.push([
			d[0], s.device, s.qdisc, kbitRate(s.rate_kbit), bps(r),
			percent(r, num(s.rate_kbit) === null ? null : s.rate_kbit * 1000),
			bytes(s.bytes), count(s.drops), count(s.ecn_marks),
			(num(s.backlog_bytes) === null) ? '-' : '%1024.1mB / %d'.format(s.backlog_bytes, s.backlog_packets || 0),
			(num(s.circuit_classes) ? String(s.circuit_classes) : '-')
		]);
		if (arr(s.tins).length > 1)
			arr(s.tins).forEach(function(t, n) {
				tins.push([ d[0], String(n), bytes(t.bytes), count(t.drops), count(t.ecn_marks),
					(num(t.avg_delay_us) === null) ? '-' : '%.1f ms'.format(t.avg_delay_us / 1000),
					(num(t.peak_delay_us) === null) ? '-' : '%.1f ms'.format(t.peak_delay_us / 1000) ]);
			});
	});

	var content = [
		table([ _('Direction'), _('Device'), _('Queue'), _('Rate'), _('Now'), _('Load'),
		        _('Sent'), _('Drops'), _('ECN marks'), _('Backlog'), _('Circuits') ],
		      rows, _('Not shaped')),
		chart(i.name, obj(sh.upload).rate_kbit, obj(sh.download).rate_kbit)
	];

	if (tins.length)
		content.push(table([ _('Direction'), _('Tin'), _('Sent'), _('Drops'), _('ECN marks'),
		                     _('Average delay'), _('Peak delay') ], tins, ''));

	if (i.autorate != null && typeof i.autorate === 'object')
		content = content.concat(autorateContent(i.autorate));

	if (sh.error)
		content.unshift(E('p', { 'class': 'alert-message warning' }, [
			_('Not shaped as configured:'), ' ', E('code', {}, String(sh.error))
		]));

	return section(_('Shaper: %s').format(i.name), content);
}

function renderStatus(st, now) {
	if (st == null || typeof st !== 'object' || st.error != null || st.version == null)
		return E('div', { 'class': 'cbi-section' }, [
			E('p', { 'class': 'alert-message warning' }, [
				_('The bpfqos daemon is not running or does not answer.'), ' ',
				E('code', {}, (st && st.error) ? String(st.error) : _('no reply'))
			]),
			E('p', {}, _('Check /etc/config/bpfqos (globals.enabled) and the system log (logread -e bpfqos).'))
		]);

	var rates = sample(st, now),
	    cfg = obj(st.config),
	    off = obj(st.offload),
	    dp = obj(st.datapath),
	    shaping = obj(st.shaping),
	    nodes = [];

	nodes.push(section(_('Daemon'), keyValues([
		[ _('Version'), st.version ],
		[ _('Uptime'), '%t'.format(num(st.uptime_s) || 0) ],
		[ _('Config reloads'), cfg.reloads ],
		[ _('Offload'), off.enabled ? _('enabled') : _('disabled') ],
		[ _('Offloaded connections'), off.connections ],
		[ _('Flow entries'), (off.flows_max != null)
			? '%s %s, %s %s'.format(count(off.flows), _('in use'), count(off.flows_max), _('per address family'))
			: off.flows ],
		[ _('Offloaded now'), bps(rates['offload']) ],
		[ _('Offloaded in total'), '%s, %s %s'.format(bytes(off.bytes), count(off.packets), _('packets')) ],
		[ _('Longest event-loop stall'), stall(obj(st.event_loop)) ]
	])));

	if (cfg.last_reload_error)
		nodes.push(E('p', { 'class': 'alert-message error' }, [
			_('The last reload was rejected; the previous configuration is still running:'), ' ',
			E('code', {}, String(cfg.last_reload_error))
		]));

	arr(cfg.warnings).forEach(function(w) {
		nodes.push(E('p', { 'class': 'alert-message warning' }, String(w)));
	});

	arr(st.interfaces).forEach(function(i) {
		if (i.shaper != null && typeof i.shaper === 'object')
			nodes.push(shaperSection(i, rates));
	});

	if (arr(st.circuits).length || num(st.circuits_total)) {
		var circuits = table(
			[ _('Circuit'), _('Addresses'), _('Upload limit'), _('Upload now'), _('Download limit'),
			  _('Download now'), _('Sent up / down'), _('Drops up / down'),
			  _('Median latency WAN / LAN') ],
			arr(st.circuits).map(function(c) {
				var u = obj(c.upload), d = obj(c.download), r = obj(c.rtt);
				return [
					c.name, arr(c.ips).join(' '), limitText(c.upload_kbit), bps(rates['circuit-up:' + c.name]),
					limitText(c.download_kbit), bps(rates['circuit-down:' + c.name]),
					'%s / %s'.format(bytes(u.bytes), bytes(d.bytes)),
					'%s / %s'.format(count(u.drops), count(d.drops)),
					(c.rtt != null) ? '%s / %s'.format(msText(obj(r.wan).median_us), msText(obj(r.lan).median_us)) : '-'
				];
			}),
			_('No circuit configured'));
		var notes = [];
		if (num(st.circuits_total) && st.circuits_total > arr(st.circuits).length)
			notes.push(E('p', {}, _('%d circuits configured; the %d busiest are shown.').format(st.circuits_total, arr(st.circuits).length)));
		if (shaping.circuit_error)
			notes.push(E('p', { 'class': 'alert-message warning' }, String(shaping.circuit_error)));
		nodes.push(section(_('Circuits'), [ circuits ].concat(notes)));
	}

	var flows = arr(st.flows);
	// The daemon lists the busiest connections (at most 256); offload.connections counts all.
	var shown = Math.min(flows.length, 50);
	var total = num(obj(st.offload).connections);
	if (total === null || total < flows.length)
		total = flows.length;
	flows.sort(function(a, b) { return (num(b.bytes) || 0) - (num(a.bytes) || 0); });
	nodes.push(section(_('Offloaded connections'), [
		table([ _('Protocol'), _('Connection'), _('Now'), _('Packets (out / back)'), _('Bytes'),
		        _('RTT WAN / LAN'), _('Retransmits') ],
			flows.slice(0, 50).map(function(f) {
				var r = obj(f.rtt);
				return [ f.proto, f.orig, bps(rates['flow:' + f.orig]),
				         '%s / %s'.format(count(f.packets_orig), count(f.packets_reply)), bytes(f.bytes),
				         flowRttText(f.rtt), (f.rtt != null) ? count(r.retransmits) : '-' ];
			}),
			_('No connection offloaded')),
		(total > shown) ? E('p', {}, _('%d more; the busiest are shown.').format(total - shown)) : ''
	]));

	nodes.push(section(_('Interfaces'), table(
		[ _('Interface'), _('Device'), _('Offload'), _('Upload'), _('Download'),
		  _('WAN-side latency (min / median / p95)'), _('LAN-side latency (min / median / p95)'),
		  _('Problem') ],
		arr(st.interfaces).map(function(i) {
			var sh = obj(i.shaper),
			    r = obj(i.rtt);
			return [
				i.wan ? '%s (%s)'.format(i.name, _('WAN')) : i.name,
				i.device, i.offload ? _('yes') : _('no'),
				shaperText(i.upload_kbit, obj(sh.upload).rate_kbit),
				shaperText(i.download_kbit, obj(sh.download).rate_kbit),
				rttText(r.wan), rttText(r.lan), i.error
			];
		}),
		_('No interface configured')
	)));

	var rtt = obj(st.rtt);
	if (st.rtt != null) {
		var lat = [];
		if (!rtt.enabled)
			lat.push(E('p', {}, _('Latency monitoring is off (option rtt in /etc/config/bpfqos).')));
		else {
			lat.push(E('p', {}, _('Measured passively on the TCP traffic the router forwards: WAN side is router \u2192 Internet host \u2192 router, LAN side router \u2192 LAN host \u2192 router. Interface figures cover the last %d seconds.').format(num(rtt.window_s) || 30)));
			arr(st.interfaces).forEach(function(i) {
				if (i.rtt != null)
					lat.push(E('h4', {}, i.name), latencyChart(i.name));
			});
			lat.push(E('h4', {}, _('Slowest connections')));
			lat.push(table([ _('Side'), _('From'), _('To'), _('Smoothed'), _('Minimum'), _('Samples'),
			                 _('Retransmits') ],
				arr(rtt.top).slice(0, 20).map(function(h) {
					return [ h.side === 'wan' ? _('WAN') : _('LAN'), h.src, h.dst, msText(h.srtt_us),
					         msText(h.min_us), count(h.samples),
					         '%s (%s)'.format(count(h.retransmits), percent(h.retransmits, h.packets)) ];
				}),
				_('No TCP connection measured yet')));
			lat.push(E('p', { 'style': 'font-size:90%' },
				_('%s samples, %s connection halves tracked of %s.').format(count(rtt.samples), count(rtt.halves), count(rtt.halves_max))));
		}
		nodes.push(section(_('Latency'), lat));
	}

	// CPU steering (status `steering`; older daemons have none).
	if (st.steering != null && typeof st.steering === 'object') {
		var sg = obj(st.steering), sgNodes = [];
		sgNodes.push(keyValues([
			[ _('CPU steering'), sg.active ? _('on') : _('off') ],
			[ _('Mode'), sg.mode ],
			[ _('CPUs'), arr(sg.cpus).length ? arr(sg.cpus).join(' ') : '-' ],
			[ _('Queue per CPU'), sg.active ? '%s %s'.format(count(sg.queue), _('frames')) : '-' ]
		]));
		if (sg.problem)
			sgNodes.push(E('p', { 'class': 'alert-message warning' }, String(sg.problem)));
		sgNodes.push(table([ _('Device'), _('Steering'), _('Why') ],
			arr(sg.devices).map(function(d) {
				d = obj(d);
				return [ d.device, d.steering ? (d.in_place ? _('yes (in place on its own CPU)') : _('yes')) : _('no'), d.reason ];
			}),
			_('No device')));
		if (arr(sg.per_cpu).length)
			sgNodes.push(table([ _('CPU'), _('Steered to it'), _('Handled where received'), _('Delivered'), _('Dropped or queued') ],
				arr(sg.per_cpu).map(function(c) {
					c = obj(c);
					var lost = num(c.steered) - num(c.delivered);
					return [ c.cpu, count(c.steered), count(c.kept), count(c.delivered), count(lost > 0 ? lost : 0) ];
				}),
				_('Nothing steered yet')));
		arr(sg.held_pppoe_sessions).forEach(function(h) {
			h = obj(h);
			sgNodes.push(E('p', {}, _('PPPoE session %s (ifindex %s) stays on its receiving CPU: its PPP stream carries state (compression, VJ, multilink).').format('0x' + (num(h.session) || 0).toString(16), h.ifindex)));
		});
		nodes.push(section(_('CPU steering'), sgNodes));
	}

	var dpRows = [
		[ _('Forwarded by the data path'), count(dp.redirect) ],
		[ _('Sent back out of the same port'), count(dp.tx) ],
		[ _('Forwarded into a shaper'), count(dp.to_shaper) ],
		[ _('Upload packets put into a circuit'), count(obj(shaping.datapath).circuit_upload) ],
		[ _('Download packets put into a circuit'), count(obj(shaping.datapath).circuit_download) ],
		[ _('Connections of circuits behind NAT'), count(shaping.circuit_nat_entries) ]
	];
	Object.keys(dp).filter(function(k) { return k.indexOf('pass_') === 0 && num(dp[k]); }).forEach(function(k) {
		dpRows.push([ _('Left to the kernel: %s').format(k.substring(5).replace(/_/g, ' ')), count(dp[k]) ]);
	});
	nodes.push(section(_('Data path'), keyValues(dpRows)));

	nodes.push(section(_('Attach points'), table(
		[ _('Device'), _('Ifindex'), _('Hook'), _('Mode'), _('Note') ],
		arr(st.attach).map(function(a) {
			return [ a.device, a.ifindex, a.hook, a.mode, a.fallback_reason ];
		}),
		_('No program attached')
	)));

	return E('div', {}, nodes);
}

return view.extend({
	load: function() {
		return L.resolveDefault(callStatus(), null);
	},

	render: function(st) {
		var body = E('div', { 'id': 'bpfqos-status' }, renderStatus(st, Date.now()));

		poll.add(function() {
			return L.resolveDefault(callStatus(), null).then(function(next) {
				dom.content(body, renderStatus(next, Date.now()));
			});
		}, POLL_S);

		return E([], [
			E('h2', {}, _('bpfqos status')),
			E('div', { 'class': 'cbi-map-descr' },
				_('Flow offload, shaping and passive latency as reported by the bpfqos daemon; refreshed every %d seconds.').format(POLL_S)),
			body
		]);
	},

	// For tests/luci/render.js: the page's rendering without LuCI's runtime.
	renderStatus: renderStatus,

	handleSave: null,
	handleSaveApply: null,
	handleReset: null
});
