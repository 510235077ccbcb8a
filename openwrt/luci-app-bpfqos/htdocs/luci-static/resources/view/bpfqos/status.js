'use strict';
'require view';
'require dom';
'require poll';
'require rpc';

// Live view of `ubus call bpfqos status` (the daemon's status document, see src/status.rs).
// Fields the daemon does not report yet (per-interface shaper rate under autorate, RTT,
// circuits) are shown when present and left out otherwise.

var callStatus = rpc.declare({
	object: 'bpfqos',
	method: 'status',
	expect: { '': {} }
});

function kbitRate(kbit) {
	if (kbit == null)
		return '-';
	if (+kbit === 0)
		return _('not shaped');
	return '%1000.1mbit/s'.format(kbit * 1000);
}

// RTT aggregates in microseconds (min_us...) or milliseconds (min_ms...), shown in ms.
function rttText(rtt) {
	if (rtt == null || typeof rtt !== 'object')
		return '-';

	var parts = [ 'min', 'median', 'p95' ].map(function(k) {
		if (rtt[k + '_us'] != null)
			return (rtt[k + '_us'] / 1000).toFixed(1);
		if (rtt[k + '_ms'] != null)
			return (+rtt[k + '_ms']).toFixed(1);
		return '?';
	});

	return '%s / %s / %s ms'.format(parts[0], parts[1], parts[2]);
}

// Current shaper rate (autorate moves it) next to the configured one.
function shaperText(configured, current) {
	if (current == null || +current === +configured)
		return kbitRate(configured);
	return '%s (%s %s)'.format(kbitRate(current), _('configured'), kbitRate(configured));
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

function section(title, content) {
	return E('div', { 'class': 'cbi-section' }, [ E('h3', {}, title), content ]);
}

function renderStatus(st) {
	if (st == null || st.error != null)
		return E('div', { 'class': 'cbi-section' }, [
			E('p', { 'class': 'alert-message warning' }, [
				_('The bpfqos daemon is not running or does not answer.'), ' ',
				E('code', {}, (st && st.error) ? st.error : _('no reply'))
			]),
			E('p', {}, _('Check /etc/config/bpfqos (globals.enabled) and the system log (logread -e bpfqos).'))
		]);

	var cfg = st.config || {},
	    off = st.offload || {},
	    nodes = [];

	var daemon = [
		[ _('Version'), st.version ],
		[ _('Uptime'), '%t'.format(st.uptime_s || 0) ],
		[ _('Config reloads'), cfg.reloads ],
		[ _('Offload'), off.enabled ? _('enabled') : _('disabled') ],
		[ _('Offloaded flows'), off.flows ],
		[ _('Offloaded packets'), off.packets ],
		[ _('Offloaded bytes'), '%1024.2mB'.format(off.bytes || 0) ]
	];

	nodes.push(section(_('Daemon'), E('table', { 'class': 'table' }, daemon.map(function(r) {
		return E('tr', { 'class': 'tr' }, [
			E('td', { 'class': 'td left', 'width': '33%' }, r[0]),
			E('td', { 'class': 'td left' }, (r[1] == null) ? '-' : String(r[1]))
		]);
	}))));

	if (cfg.last_reload_error)
		nodes.push(E('p', { 'class': 'alert-message error' }, [
			_('The last reload was rejected; the previous configuration is still running:'), ' ',
			E('code', {}, cfg.last_reload_error)
		]));

	(cfg.warnings || []).forEach(function(w) {
		nodes.push(E('p', { 'class': 'alert-message warning' }, w));
	});

	nodes.push(section(_('Attach points'), table(
		[ _('Device'), _('Ifindex'), _('Hook'), _('Mode'), _('Note') ],
		(st.attach || []).map(function(a) {
			return [ a.device, a.ifindex, a.hook, a.mode, a.fallback_reason ];
		}),
		_('No program attached')
	)));

	nodes.push(section(_('Interfaces'), table(
		[ _('Interface'), _('Device'), _('Offload'), _('Upload'), _('Download'),
		  _('RTT min / median / p95'), _('Problem') ],
		(st.interfaces || []).map(function(i) {
			var sh = i.shaper || {};
			return [
				i.name, i.device, i.offload ? _('yes') : _('no'),
				shaperText(i.upload_kbit, sh.upload_kbit),
				shaperText(i.download_kbit, sh.download_kbit),
				rttText(i.rtt), i.error
			];
		}),
		_('No interface configured')
	)));

	if (Array.isArray(st.circuits))
		nodes.push(section(_('Circuits'), table(
			[ _('Circuit'), _('Upload'), _('Download'), _('RTT min / median / p95') ],
			st.circuits.map(function(c) {
				return [ c.name, kbitRate(c.upload_kbit), kbitRate(c.download_kbit), rttText(c.rtt) ];
			}),
			_('No circuit configured')
		)));

	return E('div', {}, nodes);
}

return view.extend({
	load: function() {
		return L.resolveDefault(callStatus(), null);
	},

	render: function(st) {
		var body = E('div', { 'id': 'bpfqos-status' }, renderStatus(st));

		poll.add(function() {
			return L.resolveDefault(callStatus(), null).then(function(next) {
				dom.content(body, renderStatus(next));
			});
		}, 5);

		return E([], [
			E('h2', {}, _('bpfqos status')),
			E('div', { 'class': 'cbi-map-descr' },
				_('Flow offload, shaping and passive latency as reported by the bpfqos daemon; refreshed every 5 seconds.')),
			body
		]);
	},

	handleSave: null,
	handleSaveApply: null,
	handleReset: null
});
