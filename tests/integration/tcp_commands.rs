//! SPEC §3 over real TCP: every command, its reply and its error lines.

use crate::helpers::*;

#[tokio::test]
async fn two_users_chat_in_a_room_and_see_each_others_events() {
    let app = spawn_app().await;
    let mut alice = app.login("alice").await;
    let mut bob = app.login("bob").await;

    alice.create("general").await;
    assert!(bob.join("general").await.is_empty());
    alice.expect("[system] bob joined general").await;

    alice.send("Hello world!").await;
    alice.expect("[general] alice: Hello world!").await;
    bob.expect("[general] alice: Hello world!").await;
    bob.send("hi alice").await;
    bob.expect("[general] bob: hi alice").await;
    alice.expect("[general] bob: hi alice").await;

    bob.send("/leave").await;
    bob.expect("Left room: general").await;
    alice.expect("[system] bob left general").await;
}

#[tokio::test]
async fn twenty_clients_all_receive_every_message_in_one_order() {
    let app = spawn_app().await;
    let mut owner = app.login("owner").await;
    owner.create("crowd").await;
    let mut clients = Vec::new();
    for i in 0..20 {
        let mut c = app.login(&format!("user{i}")).await;
        c.join("crowd").await;
        owner
            .expect(&format!("[system] user{i} joined crowd"))
            .await;
        clients.push(c);
    }
    // Every later joiner saw the earlier ones join; drain those before chatting.
    for (i, c) in clients.iter_mut().enumerate() {
        for j in i + 1..20 {
            c.expect(&format!("[system] user{j} joined crowd")).await;
        }
    }
    for (i, c) in clients.iter_mut().enumerate() {
        c.send(&format!("message {i}")).await;
    }
    let mut orders = Vec::new();
    for c in clients.iter_mut().chain([&mut owner]) {
        let mut seen = Vec::new();
        for _ in 0..20 {
            seen.push(c.line().await);
        }
        orders.push(seen);
    }
    let first = &orders[0];
    let mut sorted = first.clone();
    sorted.sort();
    let mut expected: Vec<String> = (0..20)
        .map(|i| format!("[crowd] user{i}: message {i}"))
        .collect();
    expected.sort();
    assert_eq!(sorted, expected, "every message arrives exactly once");
    assert!(
        orders.iter().all(|o| o == first),
        "all members see one order"
    );
}

#[tokio::test]
async fn joining_shows_the_last_ten_of_fifteen_messages_oldest_first() {
    let app = spawn_app().await;
    let mut alice = app.login("alice").await;
    alice.create("history").await;
    for i in 1..=15 {
        alice.send(&format!("m{i}")).await;
        alice.expect(&format!("[history] alice: m{i}")).await;
    }
    let mut bob = app.login("bob").await;
    let expected: Vec<String> = (6..=15).map(|i| format!("[history] alice: m{i}")).collect();
    assert_eq!(bob.join("history").await, expected);
    // A second join is served the same (from the warm cache this time).
    let mut carol = app.login("carol").await;
    assert_eq!(carol.join("history").await, expected);
}

#[tokio::test]
async fn help_lists_every_command_indented() {
    let app = spawn_app().await;
    let mut alice = app.login("alice").await;
    alice.send("/help").await;
    alice.expect("Available commands:").await;
    for command in [
        "/help", "/nick", "/list", "/quit", "/create", "/join", "/rooms", "/leave", "/dm",
    ] {
        let line = alice.line().await;
        assert!(
            line.starts_with(&format!("  {command}")),
            "{line:?} should describe {command}"
        );
    }
}

#[tokio::test]
async fn rooms_lists_rooms_with_online_counts() {
    let app = spawn_app().await;
    let mut alice = app.login("alice").await;
    alice.send("/rooms").await;
    alice.expect("No rooms yet. Use /create <room>").await;
    alice.create("beta").await;
    alice.create("alpha").await;
    alice.send("/rooms").await;
    alice
        .expect_lines(&[
            "Available rooms:",
            "  alpha (1 online)",
            "  beta (0 online)",
        ])
        .await;
}

#[tokio::test]
async fn list_shows_room_members_or_everyone_online() {
    let app = spawn_app().await;
    let mut alice = app.login("alice").await;
    let mut bob = app.login("Bob").await;
    let _carol = app.login("carol").await;
    alice.send("/list").await;
    alice.expect("Online users: alice, Bob, carol").await;
    alice.create("r").await;
    bob.join("r").await;
    alice.send("/list").await;
    alice.expect("[system] Bob joined r").await;
    alice.expect("Users in r: alice, Bob").await;
}

#[tokio::test]
async fn nick_renames_and_tells_the_room() {
    let app = spawn_app().await;
    let (mut alice, mut bob) = app.two_in_a_room("r").await;
    bob.send("/nick robert").await;
    bob.expect("You are now known as robert").await;
    alice.expect("[system] bob is now known as robert").await;
    bob.send("/leave").await;
    bob.expect("Left room: r").await;
    alice.expect("[system] robert left r").await;
    bob.send("/list").await;
    bob.expect("Online users: alice, robert").await;
    // The old name is free again, the new one is taken.
    let _new_bob = app.login("bob").await;
    alice.send("/nick ROBERT").await;
    alice.expect("Error: Nickname already in use: ROBERT").await;
}

#[tokio::test]
async fn direct_messages_reach_the_recipient_in_any_room() {
    let app = spawn_app().await;
    let mut alice = app.login("alice").await;
    let mut bob = app.login("bob").await;
    alice.create("r").await;
    alice.send("/dm BOB psst  there").await;
    alice.expect("[DM to bob] psst  there").await;
    bob.expect("[DM from alice] psst  there").await;
    alice.send("/dm nobody hi").await;
    alice
        .expect("Error: User not found or offline: nobody")
        .await;
    alice.send("/dm alice hi").await;
    alice
        .expect("Error: You cannot send a direct message to yourself")
        .await;
}

#[tokio::test]
async fn quit_says_goodbye_and_closes() {
    let app = spawn_app().await;
    let mut alice = app.login("alice").await;
    alice.send("/quit").await;
    alice.expect("Goodbye!").await;
    assert!(alice.until_closed().await.is_empty());
}

#[tokio::test]
async fn every_error_line_leaves_the_connection_usable() {
    let app = spawn_app().await;
    let mut alice = app.login("alice").await;
    let cases = [
        (
            "/dance",
            "Error: Unknown command: /dance. Type /help for available commands",
        ),
        ("/join", "Error: Missing argument. Usage: /join <room>"),
        ("/create", "Error: Missing argument. Usage: /create <room>"),
        ("/nick", "Error: Missing argument. Usage: /nick <name>"),
        (
            "/dm bob",
            "Error: Missing argument. Usage: /dm <nick> <message>",
        ),
        ("/join nowhere", "Error: No such room: nowhere"),
        (
            "/join bad!name",
            "Error: Room name may only contain letters, digits, '_' and '-'",
        ),
        (
            "/nick a.b",
            "Error: Nickname may only contain letters, digits, '_' and '-'",
        ),
        (
            "hello?",
            "Error: You are not in a room. Use /join <room> or /create <room>",
        ),
        (
            "/leave",
            "Error: You are not in a room. Use /join <room> or /create <room>",
        ),
    ];
    for (line, error) in cases {
        alice.send(line).await;
        alice.expect(error).await;
    }
    alice.create("Room1").await;
    alice.send("/create room1").await;
    alice.expect("Error: Room already exists: room1").await;
    alice.send("still here").await;
    alice.expect("[Room1] alice: still here").await;
}

#[tokio::test]
async fn the_prompt_explains_a_bad_or_taken_nickname_and_asks_again() {
    let app = spawn_app().await;
    let _alice = app.login("alice").await;
    let mut c = Client::connect(app.tcp).await;
    c.expect("Welcome to Baby Discord!").await;
    c.expect_prompt().await;
    c.send("ALICE").await;
    c.expect("Error: Nickname already in use: ALICE").await;
    c.expect_prompt().await;
    c.send(&"x".repeat(33)).await;
    c.expect("Error: Nickname must be at most 32 characters")
        .await;
    c.expect_prompt().await;
    c.send_raw(b"\r\n").await;
    c.expect("Error: Nickname cannot be empty").await;
    c.expect_prompt().await;
    c.send_raw(b"zed\r\n").await;
    c.expect_lines(&["Welcome, zed!", "Type /help for available commands."])
        .await;
}

#[tokio::test]
async fn joining_another_room_leaves_the_first() {
    let app = spawn_app().await;
    let mut alice = app.login("alice").await;
    let mut bob = app.login("bob").await;
    alice.create("one").await;
    alice.create("two").await;
    bob.join("one").await;
    bob.join("two").await;
    alice.expect("[system] bob joined two").await;
    alice.send("/join one").await;
    alice
        .expect_lines(&[
            "Joined room: one",
            "--- Recent Messages ---",
            "No recent messages",
            "---",
        ])
        .await;
    bob.expect("[system] alice left two").await;
    bob.send("/list").await;
    bob.expect("Users in two: bob").await;
}
