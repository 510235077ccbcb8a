'use strict';
'require view';
'require form';
'require rpc';
'require uci';
'require tools.widgets as widgets';

// Form over /etc/config/bpfqos. Datatypes mirror the daemon's validation (src/config): rates are
// unsigned kbit/s with 0 meaning "not shaped", addresses are IPv4/IPv6 hosts or prefixes. Saving
// commits UCI; the init script's reload trigger then sends the daemon SIGHUP, and a config the
// daemon rejects is reported on the status page while the previous one keeps running.

var callCheckConfig = rpc.declare({
	object: 'bpfqos',
	method: 'check_config',
	expect: { '': {} }
});

// kbit/s as the daemon accepts it: 0 (not shaped) up to 1 Tbit/s.
var RATE_DATATYPE = 'and(uinteger,max(1000000000))';

function rateOption(s, tab, name, title, description) {
	var o = s.taboption(tab, form.Value, name, title, description);
	o.datatype = RATE_DATATYPE;
	o.placeholder = '0';
	return o;
}

return view.extend({
	load: function() {
		return Promise.all([
			uci.load('bpfqos'),
			L.resolveDefault(callCheckConfig(), {})
		]);
	},

	render: function(data) {
		var check = data[1] || {},
		    m, s, o;

		m = new form.Map('bpfqos', _('bpfqos'),
			_('XDP/TC flow offload, SQM-style shaping, passive latency monitoring and autorate. Rates are in kbit/s; 0 disables shaping in that direction.'));

		if (check.valid === false && Array.isArray(check.errors) && check.errors.length)
			m.description = E([], [
				m.description,
				E('div', { 'class': 'alert-message error' }, [
					E('p', {}, _('The saved configuration has errors; the daemon keeps running the last valid one:')),
					E('ul', {}, check.errors.map(function(e) { return E('li', {}, e); }))
				])
			]);

		s = m.section(form.NamedSection, 'globals', 'globals', _('Global settings'));
		s.addremove = false;

		o = s.option(form.Flag, 'enabled', _('Enabled'), _('Run the bpfqos daemon.'));
		o.default = o.enabled;
		o.rmempty = false;

		o = s.option(form.Flag, 'offload', _('Flow offload'),
			_('Forward established connections in XDP/TC, bypassing bridge, VLAN, PPPoE and netfilter.'));
		o.default = o.enabled;
		o.rmempty = false;

		o = s.option(form.Flag, 'rtt', _('Latency monitoring'),
			_('Measure the round-trip time of real TCP traffic (needed by autorate).'));
		o.default = o.enabled;
		o.rmempty = false;

		o = s.option(form.ListValue, 'steering', _('CPU steering'),
			_('Spread the receive work of traffic the offload does not take (new connections, PPPoE, the kernel path) over the CPUs. Automatic: where one receive queue or PPPoE would put it all on one CPU.'));
		o.value('auto', _('Automatic'));
		o.value('1', _('On'));
		o.value('0', _('Off'));
		o.default = 'auto';

		o = s.option(form.Value, 'steering_cpus', _('Steering CPUs'),
			_('CPUs to spread over, e.g. 0-3 or 1 2 3. Empty: every online CPU.'));
		o.optional = true;
		o.placeholder = _('all');
		o.depends({ steering: '0', '!reverse': true });

		o = s.option(form.Value, 'steering_queue', _('Steering queue'),
			_('Frames queued per CPU (8-16384). Each may hold a page of memory.'));
		o.datatype = 'range(8,16384)';
		o.optional = true;
		o.placeholder = '1024';
		o.depends({ steering: '0', '!reverse': true });

		o = s.option(form.ListValue, 'log_level', _('Log level'));
		[ 'off', 'error', 'warn', 'info', 'debug', 'trace' ].forEach(function(l) { o.value(l); });
		o.default = 'info';

		s = m.section(form.TypedSection, 'interface', _('Interfaces'),
			_('A link to shape and offload, usually the WAN. Give either a logical network or a device.'));
		s.addremove = true;
		s.anonymous = false;
		s.tab('general', _('General'));
		s.tab('shaping', _('Shaping'));
		s.tab('autorate', _('Autorate'));

		o = s.taboption('general', widgets.NetworkSelect, 'network', _('Network'),
			_('Logical interface, resolved to its device the way netifd names it (wan with PPPoE: pppoe-wan). Protocols such as QMI need the device set instead.'));
		o.optional = true;
		o.nocreate = true;

		o = s.taboption('general', widgets.DeviceSelect, 'device', _('Device'),
			_('Instead of a network: a device name such as eth1 or pppoe-wan.'));
		o.optional = true;
		o.noaliases = true;
		o.depends('network', '');
		o.validate = function(section_id, value) {
			var net = this.section.formvalue(section_id, 'network');
			if (!value && !net)
				return _('Set a network or a device');
			if (value && !/^[^\s\/:]{1,15}$/.test(value))
				return _('Expecting a device name of at most 15 characters without "/", ":" or spaces');
			return true;
		};

		o = s.taboption('general', form.Flag, 'offload', _('Flow offload'),
			_('Offload flows entering or leaving this interface (when global offload is on).'));
		o.default = o.enabled;

		o = s.taboption('general', form.ListValue, 'wan', _('Faces the Internet'),
			_('Latency measured on it is WAN-side latency. Automatic: when it is shaped or holds a default route.'));
		o.value('', _('automatic'));
		o.value('1', _('yes'));
		o.value('0', _('no'));
		o.optional = true;

		rateOption(s, 'shaping', 'upload', _('Upload (kbit/s)'), _('Egress rate; 0 = not shaped.'));
		rateOption(s, 'shaping', 'download', _('Download (kbit/s)'), _('Ingress rate; 0 = not shaped.'));

		o = s.taboption('shaping', form.ListValue, 'qdisc', _('Queue discipline'),
			_('cake: like sqm\'s piece_of_cake (per-host fairness behind NAT). fq_codel: HTB with fq_codel, like simple.qos. fifo: HTB with plain queues, for kernels without either.'));
		o.value('cake', 'cake');
		o.value('fq_codel', 'fq_codel');
		o.value('fifo', 'fifo');
		o.default = 'cake';

		o = s.taboption('shaping', form.Value, 'overhead', _('Overhead (bytes)'),
			_('Bytes the link adds to every IP packet, as in sqm: DOCSIS 18, bridged VDSL2 22, PPPoE on VDSL2 30 (34 with a VLAN tag), Ethernet 38, ADSL 44 (with link layer ATM).'));
		o.datatype = 'range(-64,256)';
		o.placeholder = '0';

		o = s.taboption('shaping', form.ListValue, 'linklayer', _('Link layer'),
			_('ATM for ADSL (48 of every 53 bytes carry data), PTM for VDSL2 (64/65 encoding).'));
		o.value('ethernet', _('Ethernet, cable, fibre'));
		o.value('atm', _('ATM (ADSL)'));
		o.value('ptm', _('PTM (VDSL2)'));
		o.default = 'ethernet';

		o = s.taboption('shaping', form.Value, 'mpu', _('Minimum packet unit (bytes)'),
			_('Every packet is charged at least this much (after overhead).'));
		o.datatype = 'range(0,256)';
		o.placeholder = '0';

		o = s.taboption('shaping', form.ListValue, 'diffserv', _('Priority tiers'),
			_('CAKE\'s tiers by DSCP. Best effort ignores DSCP (sqm\'s default).'));
		o.value('besteffort', _('Best effort'));
		o.value('diffserv3', 'diffserv3');
		o.value('diffserv4', 'diffserv4');
		o.value('diffserv8', 'diffserv8');
		o.value('precedence', 'precedence');
		o.default = 'besteffort';
		o.depends('qdisc', 'cake');

		o = s.taboption('autorate', form.Flag, 'autorate', _('Autorate'),
			_('Follow the link: lower the rate when latency under load rises, probe up when clean.'));

		[ [ 'min_upload', _('Minimum upload (kbit/s)') ],
		  [ 'max_upload', _('Maximum upload (kbit/s)') ],
		  [ 'min_download', _('Minimum download (kbit/s)') ],
		  [ 'max_download', _('Maximum download (kbit/s)') ] ].forEach(function(opt) {
			o = rateOption(s, 'autorate', opt[0], opt[1]);
			o.depends('autorate', '1');
		});

		o = s.taboption('autorate', form.Value, 'autorate_delay', _('Delay threshold (ms)'),
			_('Latency above the connections\' own base from which the line counts as delayed. 8 ms suits cable, DSL and fibre; radio links (LTE/5G) with jitter of their own may need 15-30.'));
		o.datatype = 'range(1,1000)';
		o.placeholder = '8';
		o.depends('autorate', '1');

		s = m.section(form.GridSection, 'circuit', _('Circuits'),
			_('Per-host or per-subnet limits inside every shaped link; busy circuits and the other hosts share the link in equal turns, each up to its limit. Hosts behind NAT are recognised by their own address. 0: no limit in that direction.'));
		s.addremove = true;
		s.anonymous = true;
		s.nodescriptions = true;

		o = s.option(form.Value, 'name', _('Name'));
		o.datatype = 'maxlength(64)';
		o.rmempty = false;

		o = s.option(form.DynamicList, 'ip', _('Addresses'),
			_('IPv4/IPv6 host addresses or prefixes (CIDR).'));
		o.datatype = 'or(ipaddr,cidr)';
		o.rmempty = false;

		o = s.option(form.Value, 'upload', _('Upload (kbit/s)'));
		o.datatype = RATE_DATATYPE;
		o.placeholder = '0';

		o = s.option(form.Value, 'download', _('Download (kbit/s)'));
		o.datatype = RATE_DATATYPE;
		o.placeholder = '0';

		return m.render();
	}
});
