-- miltertest(8) script for the tls-policyd milter. Run by tests/miltertest.rs
-- with -D socket=inet:PORT@127.0.0.1; the milter runs with
-- refuse = "defer", trace_header = "X-TLS-Policy", quarantine = true,
-- routing_header = "X-TLS-Route", and knows that refused.example has no
-- STARTTLS and that held.example's forced TLS cannot be met.

local function check(cond, what)
	if not cond then
		error("FAILED: " .. what)
	end
	mt.echo("ok: " .. what)
end

local function expect_reply(conn, want, what)
	local got = mt.getreply(conn)
	check(got == want, what .. " (reply " .. tostring(got) .. ")")
end

conn = mt.connect(socket, 20, 0.1)
check(conn ~= nil, "connect to " .. socket)

-- Offer everything; the milter takes only header changes and quarantine.
check(mt.negotiate(conn, nil, nil, nil) == nil, "negotiate")
check(mt.test_action(conn, SMFIF_ADDHDRS), "asks to add headers")
check(mt.test_action(conn, SMFIF_QUARANTINE), "asks to quarantine")
check(not mt.test_action(conn, SMFIF_CHGBODY), "does not ask to change the body")
check(not mt.test_action(conn, SMFIF_ADDRCPT), "does not ask to add recipients")
check(not mt.test_action(conn, SMFIF_DELRCPT), "does not ask to delete recipients")
check(not mt.test_action(conn, SMFIF_CHGHDRS), "does not ask to change headers")
check(not mt.test_action(conn, SMFIF_CHGFROM), "does not ask to change the sender")
check(mt.test_option(conn, SMFIP_NOBODY), "skips the body")

-- Message 1: a forced domain known without STARTTLS is deferred at RCPT,
-- an opportunistic one accepted; the trace header lists what is left.
mt.macro(conn, SMFIC_CONNECT, "j", "mx.test.example", "{daemon_name}", "smtpd")
check(mt.conninfo(conn, "client.example", "192.0.2.25") == nil, "conninfo")
expect_reply(conn, SMFIR_CONTINUE, "connect continues")
mt.macro(conn, SMFIC_HELO, "{tls_version}", "TLSv1.2", "{cipher}", "ECDHE-RSA-AES128-GCM-SHA256",
	"{cipher_bits}", "128")
check(mt.helo(conn, "client.example") == nil, "helo")
mt.macro(conn, SMFIC_MAIL, "{mail_addr}", "alice@src.example", "{auth_authen}", "alice")
check(mt.mailfrom(conn, "<alice@src.example>") == nil, "mail from")
expect_reply(conn, SMFIR_CONTINUE, "mail continues")
mt.macro(conn, SMFIC_RCPT, "i", "MT1", "{rcpt_addr}", "bob@refused.example")
check(mt.rcptto(conn, "<bob@refused.example>") == nil, "rcpt refused.example")
expect_reply(conn, SMFIR_REPLYCODE, "refused.example gets a reply code")
mt.macro(conn, SMFIC_RCPT, "i", "MT1", "{rcpt_addr}", "carol@other.example")
check(mt.rcptto(conn, "<carol@other.example>") == nil, "rcpt other.example")
expect_reply(conn, SMFIR_CONTINUE, "other.example continues")
check(mt.header(conn, "Message-ID", "<mt1@src.example>") == nil, "header")
check(mt.eom(conn) == nil, "end of message")
expect_reply(conn, SMFIR_CONTINUE, "end of message continues")
check(mt.eom_check(conn, MT_HDRINSERT, "X-TLS-Policy",
	"other.example=opportunistic (may, default)", 0), "trace header inserted at the top")
check(not mt.eom_check(conn, MT_HDRINSERT, "X-TLS-Route"), "no routing header")
check(not mt.eom_check(conn, MT_QUARANTINE), "not quarantined")

-- Message 2 on the same connection: TLS-Required: No with an
-- opportunistic recipient is routed relaxed.
mt.macro(conn, SMFIC_MAIL, "{mail_addr}", "alice@src.example")
check(mt.mailfrom(conn, "<alice@src.example>") == nil, "second mail from")
mt.macro(conn, SMFIC_RCPT, "i", "MT2", "{rcpt_addr}", "dave@other.example")
check(mt.rcptto(conn, "<dave@other.example>") == nil, "second rcpt")
check(mt.header(conn, "TLS-Required", "No") == nil, "TLS-Required header")
check(mt.eom(conn) == nil, "second end of message")
check(mt.eom_check(conn, MT_HDRINSERT, "X-TLS-Route", "relaxed"), "relaxed route")

-- Message 3: aborted after RCPT (RSET): no reply expected, no record.
mt.macro(conn, SMFIC_MAIL, "{mail_addr}", "alice@src.example")
check(mt.mailfrom(conn, "<alice@src.example>") == nil, "third mail from")
mt.macro(conn, SMFIC_RCPT, "i", "MT3", "{rcpt_addr}", "erin@other.example")
check(mt.rcptto(conn, "<erin@other.example>") == nil, "third rcpt")
check(mt.abort(conn) == nil, "abort")

-- Message 4: a forced recipient accepted (refusal off for its rule),
-- known not to be deliverable: quarantined.
mt.macro(conn, SMFIC_MAIL, "{mail_addr}", "alice@src.example")
check(mt.mailfrom(conn, "<alice@src.example>") == nil, "fourth mail from")
mt.macro(conn, SMFIC_RCPT, "i", "MT4", "{rcpt_addr}", "frank@held.example")
check(mt.rcptto(conn, "<frank@held.example>") == nil, "fourth rcpt")
expect_reply(conn, SMFIR_CONTINUE, "held.example is accepted")
check(mt.eom(conn) == nil, "fourth end of message")
check(mt.eom_check(conn, MT_QUARANTINE), "quarantined")

check(mt.disconnect(conn) == nil, "disconnect")
mt.echo("all checks passed")
