import CivilDate

/// UTC calendar arithmetic on seconds since 1970, for `date(…)` and the calendar periods of time
/// conditions (days from the civil date after Howard Hinnant's algorithms; weeks start on Monday).
public enum CivilTime {
    /// Days since 1970-01-01 of a proleptic Gregorian date.
    public static func days(year: Int, month: Int, day: Int) -> Int {
        CivilDate.days(year: year, month: month, day: day)
    }

    /// The date of a day since 1970-01-01.
    public static func date(days: Int) -> (year: Int, month: Int, day: Int) { CivilDate.date(days: days) }

    /// The number of days of a month.
    public static func daysInMonth(year: Int, month: Int) -> Int { CivilDate.daysInMonth(year: year, month: month) }

    /// `time` moved by `count` calendar units (negative: back), keeping the time of day; a day of month
    /// that the target month lacks becomes its last day (March 31 minus one month is February 28/29).
    public static func adding(_ count: Int, _ unit: TimeUnit, to time: Double) -> Double {
        switch unit {
        case .days: return time + Double(count) * 86_400
        case .weeks: return time + Double(count) * 7 * 86_400
        case .months, .years:
            let dayNumber = Int((time / 86_400).rounded(.down))
            let secondOfDay = time - Double(dayNumber) * 86_400
            let (year, month, day) = date(days: dayNumber)
            let months = year * 12 + (month - 1) + (unit == .months ? count : count * 12)
            let (newYear, newMonth) = (months >= 0 ? months / 12 : (months - 11) / 12, ((months % 12) + 12) % 12 + 1)
            let newDay = min(day, daysInMonth(year: newYear, month: newMonth))
            return Double(days(year: newYear, month: newMonth, day: newDay)) * 86_400 + secondOfDay
        }
    }

    /// The start of the calendar period holding `time`.
    public static func startOfPeriod(_ unit: TimeUnit, containing time: Double) -> Double {
        let dayNumber = Int((time / 86_400).rounded(.down))
        switch unit {
        case .days: return Double(dayNumber) * 86_400
        case .weeks:
            // 1970-01-01 was a Thursday: Monday-based weekday index is (days + 3) mod 7.
            let weekday = ((dayNumber + 3) % 7 + 7) % 7
            return Double(dayNumber - weekday) * 86_400
        case .months:
            let (year, month, _) = date(days: dayNumber)
            return Double(days(year: year, month: month, day: 1)) * 86_400
        case .years:
            return Double(days(year: date(days: dayNumber).year, month: 1, day: 1)) * 86_400
        }
    }
}
