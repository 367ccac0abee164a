//! Turns one input line into an [`Input`]: a chat message or a parsed slash command.
//!
//! Pure and synchronous; names are parsed into newtypes here so that everything below works with
//! valid `Nickname`s and `RoomName`s only.

use super::error::Error;
use super::names::{Nickname, RoomName};

/// One line from a user, understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A line not starting with `/`: a message to the current room.
    Chat(String),
    Command(Command),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Help,
    Nick(Nickname),
    List,
    Quit,
    Create(RoomName),
    Join(RoomName),
    Rooms,
    Leave,
    Dm { to: Nickname, content: String },
}

impl Command {
    /// The command's name, used as a metric label (bounded set, never user text).
    pub fn name(&self) -> &'static str {
        match self {
            Command::Help => "help",
            Command::Nick(_) => "nick",
            Command::List => "list",
            Command::Quit => "quit",
            Command::Create(_) => "create",
            Command::Join(_) => "join",
            Command::Rooms => "rooms",
            Command::Leave => "leave",
            Command::Dm { .. } => "dm",
        }
    }
}

/// Usage lines, shown by `/help` and in "missing argument" errors.
pub const HELP: &[(&str, &str)] = &[
    ("/help", "Show this help"),
    ("/nick <name>", "Change your nickname"),
    ("/list", "List users in your room (or everyone online)"),
    ("/quit", "Disconnect"),
    ("/create <room>", "Create a room and join it"),
    ("/join <room>", "Join a room"),
    ("/rooms", "List rooms"),
    ("/leave", "Leave the current room"),
    ("/dm <nick> <message>", "Send a direct message"),
];

fn usage(command: &str) -> &'static str {
    HELP.iter()
        .map(|(usage, _)| *usage)
        .find(|usage| usage.split(' ').next() == Some(command))
        .unwrap_or("/help")
}

/// Parses a line that has already been stripped of its line ending and sanitised.
///
/// Returns `None` for a blank line, which the protocol ignores.
pub fn parse(line: &str) -> Option<Result<Input, Error>> {
    let line = line.trim();
    if line.is_empty() {
        return None;
    }
    let Some(rest) = line.strip_prefix('/') else {
        return Some(Ok(Input::Chat(line.to_owned())));
    };
    let (name, args) = match rest.split_once(char::is_whitespace) {
        Some((name, args)) => (name, args.trim()),
        None => (rest, ""),
    };
    Some(parse_command(&name.to_ascii_lowercase(), args).map(Input::Command))
}

fn parse_command(name: &str, args: &str) -> Result<Command, Error> {
    let slash = format!("/{name}");
    let required = || {
        if args.is_empty() {
            Err(Error::MissingArgument(usage(&slash)))
        } else {
            Ok(args)
        }
    };
    Ok(match name {
        "help" => Command::Help,
        "list" => Command::List,
        "quit" => Command::Quit,
        "rooms" => Command::Rooms,
        "leave" => Command::Leave,
        "nick" => Command::Nick(Nickname::parse(required()?)?),
        "create" => Command::Create(RoomName::parse(required()?)?),
        "join" => Command::Join(RoomName::parse(required()?)?),
        "dm" => {
            let (to, content) = required()?
                .split_once(char::is_whitespace)
                .ok_or(Error::MissingArgument(usage(&slash)))?;
            Command::Dm {
                to: Nickname::parse(to)?,
                content: content.trim().to_owned(),
            }
        }
        _ => return Err(Error::UnknownCommand(slash)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(line: &str) -> Result<Command, Error> {
        match parse(line).expect("not blank") {
            Ok(Input::Command(c)) => Ok(c),
            Ok(Input::Chat(_)) => panic!("parsed as chat"),
            Err(e) => Err(e),
        }
    }

    fn room(name: &str) -> RoomName {
        RoomName::parse(name).unwrap()
    }

    #[test]
    fn every_command_parses() {
        assert_eq!(cmd("/help"), Ok(Command::Help));
        assert_eq!(cmd("/list"), Ok(Command::List));
        assert_eq!(cmd("/quit"), Ok(Command::Quit));
        assert_eq!(cmd("/rooms"), Ok(Command::Rooms));
        assert_eq!(cmd("/leave"), Ok(Command::Leave));
        assert_eq!(
            cmd("/nick bob"),
            Ok(Command::Nick(Nickname::parse("bob").unwrap()))
        );
        assert_eq!(cmd("/create general"), Ok(Command::Create(room("general"))));
        assert_eq!(cmd("/join general"), Ok(Command::Join(room("general"))));
        assert_eq!(
            cmd("/dm bob hi there"),
            Ok(Command::Dm {
                to: Nickname::parse("bob").unwrap(),
                content: "hi there".into()
            })
        );
    }

    #[test]
    fn extra_spaces_and_upper_case_command_names_are_tolerated() {
        assert_eq!(
            cmd("  /JOIN    general   "),
            Ok(Command::Join(room("general")))
        );
        assert_eq!(
            cmd("/dm   bob    hi  there "),
            Ok(Command::Dm {
                to: Nickname::parse("bob").unwrap(),
                content: "hi  there".into()
            })
        );
        assert_eq!(cmd("/rooms   "), Ok(Command::Rooms));
    }

    #[test]
    fn missing_arguments_name_the_usage() {
        assert_eq!(cmd("/join"), Err(Error::MissingArgument("/join <room>")));
        assert_eq!(
            cmd("/create  "),
            Err(Error::MissingArgument("/create <room>"))
        );
        assert_eq!(cmd("/nick"), Err(Error::MissingArgument("/nick <name>")));
        assert_eq!(
            cmd("/dm"),
            Err(Error::MissingArgument("/dm <nick> <message>"))
        );
        assert_eq!(
            cmd("/dm bob"),
            Err(Error::MissingArgument("/dm <nick> <message>"))
        );
    }

    #[test]
    fn unknown_commands_and_bad_names_are_errors() {
        assert_eq!(cmd("/dance"), Err(Error::UnknownCommand("/dance".into())));
        assert!(matches!(cmd("/join bad room!"), Err(Error::InvalidName(_))));
        assert!(matches!(cmd("/nick a.b"), Err(Error::InvalidName(_))));
    }

    #[test]
    fn plain_lines_are_chat_and_blank_lines_are_ignored() {
        assert_eq!(
            parse("hello /world"),
            Some(Ok(Input::Chat("hello /world".into())))
        );
        assert_eq!(parse("   "), None);
        assert_eq!(parse(""), None);
    }
}
